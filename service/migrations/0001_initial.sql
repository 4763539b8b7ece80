-- The first schema. Applied once per database: service/migrate.py records its version, never its text, so an edit
-- here reaches only new databases and must leave the schema it makes exactly as it was.

CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family_id uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE discussions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    topic text NOT NULL,
    panel text[] NOT NULL,
    max_rounds int NOT NULL,
    token_budget int NOT NULL,
    status text NOT NULL,
    verdict jsonb,
    tokens_used int NOT NULL DEFAULT 0,
    lease_owner text,
    lease_expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX discussions_user_idx ON discussions (user_id, created_at DESC);
CREATE INDEX discussions_lease_idx ON discussions (lease_expires_at) WHERE status IN ('running', 'stopping');

CREATE TABLE messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    discussion_id uuid NOT NULL REFERENCES discussions(id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    turn_index int NOT NULL,
    round int NOT NULL,
    role text NOT NULL,
    status text NOT NULL,
    content text NOT NULL,
    reasoning text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (discussion_id, turn_index)
);

CREATE TABLE token_usage (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    discussion_id uuid REFERENCES discussions(id) ON DELETE SET NULL,
    prompt_tokens int NOT NULL,
    completion_tokens int NOT NULL,
    cache_hit_tokens int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Uploads' metadata: the bytes live in the artifact store (a local folder, or COS with several hosts).
CREATE TABLE files (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    filename text NOT NULL,
    content_type text NOT NULL,
    size_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_user_idx ON files (user_id, created_at DESC);
CREATE INDEX token_usage_user_idx ON token_usage (user_id);
