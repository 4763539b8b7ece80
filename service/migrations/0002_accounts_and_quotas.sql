-- Closed sign-up and spending limits (issue 14): admins, disabled accounts, single-use invitations, and an
-- index for the daily token sums that the quota check and the /metrics ceiling gauge read.
ALTER TABLE users
    ADD COLUMN is_admin boolean NOT NULL DEFAULT false,
    ADD COLUMN disabled_at timestamptz;

CREATE TABLE invitations (
    code_hash bytea PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    -- No link to the account it made: deleting that account must leave nothing that names it.
    note text NOT NULL DEFAULT ''
);

DROP INDEX token_usage_user_idx;
CREATE INDEX token_usage_user_day_idx ON token_usage (user_id, created_at);
CREATE INDEX token_usage_day_idx ON token_usage (created_at);
