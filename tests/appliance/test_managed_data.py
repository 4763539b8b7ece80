"""Managed data services (TencentDB for PostgreSQL and Redis): the config refused in one line when it would not be TLS
with a checked certificate, and the release's files when it is: no data containers, the URLs, the CA shipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from appliance.config import Config, load_config
from appliance.errors import ConfigError
from appliance.release_commands import migrate, stack_up
from appliance.releases import Release
from appliance.render import data_images, release_files, write_tree
from appliance.secrets import MASK, ensure_generated, load_secrets
from tests.certificates import issue_chain
from tests.conftest import REPO

DB_PASSWORD = "db pass/with:odd@chars?&#"
MIGRATION_PASSWORD = "migrations-only-secret-9"
REDIS_PASSWORD = "redis-secret-0123"
MANAGED = """
[database]
host = "db.internal.example.com"
name = "appliance"
user = "appliance_app"
ca_file = "tencentdb-ca.pem"
{database_extra}

[redis]
host = "redis.internal.example.com"
port = 6380
ca_file = "tencentdb-ca.pem"
"""


def managed_config(tmp_path: Path, database_extra: str = "", ca_text: str | None = None) -> Config:
    """The example config with a managed database and Redis appended, their secrets and the console's CA."""
    config_file = tmp_path / "appliance.toml"
    shutil.copy(REPO / "appliance.example.toml", config_file)
    with config_file.open("a", encoding="utf-8") as toml:
        toml.write(MANAGED.format(database_extra=database_extra))
    (tmp_path / "tencentdb-ca.pem").write_text(
        issue_chain("db.internal.example.com").root if ca_text is None else ca_text
    )
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(
        f"AI_API_KEY=sk-pool-one-1234\nDATABASE_PASSWORD='{DB_PASSWORD}'\n"
        f"DATABASE_MIGRATION_PASSWORD={MIGRATION_PASSWORD}\nMANAGED_REDIS_PASSWORD={REDIS_PASSWORD}\n"
    )
    secrets_file.chmod(0o600)
    ensure_generated(secrets_file, {})
    return load_config(config_file)


def rendered(config: Config, reveal: bool = True) -> dict[str, tuple[str, int]]:
    files = release_files(config, load_secrets(config.secrets_path, {}), "v1", reveal=reveal)
    return {item.path.removeprefix("/opt/appliance/releases/v1/"): (item.content, item.mode) for item in files}


def env_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ('sslmode = "prefer"', "database.sslmode: 'prefer' must be one of verify-full, verify-ca, require"),
        ('sslmode = "disable"', "database.sslmode: 'disable' must be one of verify-full, verify-ca, require"),
        ('sslmode = "require"', "database: sslmode 'require' checks no CA: use 'verify-full' with this ca_file"),
        ("port = 0", "database.port: Input should be greater than or equal to 1"),
    ],
)
def test_a_database_that_would_not_verify_tls_is_refused_naming_the_field(
    tmp_path: Path, extra: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        managed_config(tmp_path, extra)
    assert f"{tmp_path / 'appliance.toml'}: {says}" in str(refused.value)


@pytest.mark.unit
def test_verify_full_needs_a_ca_file_and_redis_needs_tls(tmp_path: Path) -> None:
    config = managed_config(tmp_path)
    text = (
        config.path.read_text().replace('ca_file = "tencentdb-ca.pem"\n', "", 1).replace("port = 6380", "tls = false")
    )
    config.path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(config.path)
    message = str(refused.value)
    assert "database: sslmode 'verify-full' needs ca_file: the CA certificate from the TencentDB console" in message
    assert "redis.tls: must be true: a managed Redis is reached over TLS only" in message


@pytest.mark.unit
def test_the_release_reaches_managed_data_over_verified_tls(tmp_path: Path) -> None:
    files = rendered(managed_config(tmp_path, 'migration_user = "appliance_migrator"'))
    env = env_of(files["api.env"][0])
    database = urlsplit(env["DATABASE_URL"])
    assert (database.scheme, database.hostname, database.port, database.path) == (
        "postgresql", "db.internal.example.com", 5432, "/appliance",
    )  # fmt: skip
    assert (database.username, unquote(database.password or "")) == ("appliance_app", DB_PASSWORD)
    assert parse_qs(database.query) == {
        "sslmode": ["verify-full"],
        "sslrootcert": ["/etc/appliance/data-ca/postgres-ca.pem"],
    }
    redis = urlsplit(env["REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port, unquote(redis.password or "")) == (
        "rediss", "redis.internal.example.com", 6380, REDIS_PASSWORD,
    )  # fmt: skip
    assert parse_qs(redis.query) == {
        "ssl_cert_reqs": ["required"],
        "ssl_ca_certs": ["/etc/appliance/data-ca/redis-ca.pem"],
        "ssl_check_hostname": ["true"],
    }
    # The DDL role's password stays out of the API's environment: only the migrations' own file holds it.
    assert MIGRATION_PASSWORD not in files["api.env"][0]
    migration_url, mode = files["migration.url"]
    assert mode == 0o600 and urlsplit(migration_url.strip()).username == "appliance_migrator"
    assert unquote(urlsplit(migration_url.strip()).password or "") == MIGRATION_PASSWORD
    ca, ca_mode = files["data-ca/postgres-ca.pem"]
    assert ca_mode == 0o644 and ca == (tmp_path / "tencentdb-ca.pem").read_text() and "data-ca/redis-ca.pem" in files


@pytest.mark.unit
def test_the_stack_runs_no_data_containers_and_the_api_mounts_the_ca(tmp_path: Path) -> None:
    files = rendered(managed_config(tmp_path))
    stack = yaml.safe_load(files["docker-compose.yml"][0])
    assert "postgres" not in stack["services"] and "redis" not in stack["services"] and "nginx" in stack["services"]
    assert not {"pgdata", "redisdata"} & set(stack["volumes"])
    assert "postgres.env" not in files and "redis.env" not in files and "migration.url" not in files
    api = yaml.safe_load(files["api.yml"][0])["services"]["api"]
    assert "./data-ca:/etc/appliance/data-ca:ro" in api["volumes"]


@pytest.mark.unit
def test_masked_render_shows_no_managed_password(tmp_path: Path) -> None:
    files = rendered(managed_config(tmp_path, 'migration_user = "appliance_migrator"'), reveal=False)
    text = "".join(content for content, _ in files.values())
    assert not any(secret in text for secret in (DB_PASSWORD, MIGRATION_PASSWORD, REDIS_PASSWORD))
    assert f"appliance_app:{MASK}@db.internal.example.com" in env_of(files["api.env"][0])["DATABASE_URL"]


@pytest.mark.unit
def test_a_missing_managed_password_is_one_line(tmp_path: Path) -> None:
    config = managed_config(tmp_path)
    lines = config.secrets_path.read_text().splitlines()
    config.secrets_path.write_text("".join(f"{line}\n" for line in lines if not line.startswith("MANAGED_REDIS")))
    with pytest.raises(ConfigError, match=r"secrets\.env: the managed data services need the MANAGED_REDIS_PASSWORD"):
        rendered(config)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("ca_text", "says"),
    [
        (None, "not found: download the CA certificate from the console"),
        ("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n", "holds a private key"),
        ("hello\n", "not a PEM certificate bundle"),
    ],
)
def test_a_ca_file_that_is_not_a_certificate_alone_is_refused(tmp_path: Path, ca_text: str | None, says: str) -> None:
    config = managed_config(tmp_path)
    ca = tmp_path / "tencentdb-ca.pem"
    if ca_text is None:
        ca.unlink()
    else:
        ca.write_text(ca_text)
    with pytest.raises(ConfigError) as refused:
        rendered(config)
    assert str(refused.value).startswith(f"{config.path}: database.ca_file: {ca}") and says in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.unit
def test_a_chain_with_its_key_is_refused(tmp_path: Path) -> None:
    chain = issue_chain("db.internal.example.com")
    with pytest.raises(ConfigError, match="holds a private key: give the CA certificate alone"):
        rendered(managed_config(tmp_path, ca_text=chain.root + chain.key))


@pytest.mark.unit
def test_deploy_waits_for_no_data_container_and_migrates_as_the_migration_role(tmp_path: Path) -> None:
    release = Release(managed_config(tmp_path, 'migration_user = "appliance_migrator"').settings, "v1")
    assert "Health.Status" not in stack_up(release)
    command = migrate(release)
    assert 'MIGRATION_DATABASE_URL="$(cat /opt/appliance/releases/v1/migration.url)"' in command
    assert "run --rm --no-deps -e MIGRATION_DATABASE_URL api python3 -m service.migrate" in command


@pytest.mark.integration
def test_the_managed_release_passes_docker_compose_config(tmp_path: Path) -> None:
    write_tree(
        release_files(managed_config(tmp_path), load_secrets(tmp_path / "secrets.env", {}), "v1", reveal=True),
        tmp_path / "host",
    )
    release = tmp_path / "host/opt/appliance/releases/v1"
    for project, compose_file in (("agents", "docker-compose.yml"), ("agents-api-v1", "api.yml")):
        check = subprocess.run(
            ["docker-compose", "--project-name", project, "--file", compose_file, "config", "--quiet"],
            cwd=release, capture_output=True, text=True,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr


def test_a_host_gets_only_the_data_images_it_runs_or_dumps_with(tmp_path: Path) -> None:
    config = managed_config(tmp_path)
    images = config.settings.images
    assert data_images(load_config(REPO / "appliance.example.toml").settings) == {
        "postgres": images.postgres,
        "redis": images.redis,
    }
    # A managed database that the appliance backs up: postgres's image is its pg_dump; managed Redis needs none.
    backed_up = config.settings.model_copy(
        update={"backup": config.settings.backup.model_copy(update={"enabled": True})}
    )
    assert data_images(backed_up) == {"postgres": images.postgres}
    unbacked = config.settings.model_copy(
        update={"backup": config.settings.backup.model_copy(update={"enabled": False})}
    )
    assert data_images(unbacked) == {}
