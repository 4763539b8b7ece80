"""Rendering: every host file for a config, secrets masked unless revealed, valid for Compose."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.backup.cos import CosTarget
from appliance.config import Config, load_config
from appliance.errors import ApplianceError, ConfigError
from appliance.render import api_image, check_artifact_key, release_files, release_slug, stack_limits, write_tree
from appliance.secrets import MASK, load_secrets
from service.settings import load_settings
from service.storage import cos_config
from tests.appliance.nginx_site import assert_nginx_accepts
from tests.conftest import REPO, example_config


@pytest.fixture()
def example(tmp_path: Path) -> Config:
    return example_config(tmp_path, "sk-pool-one-1234,sk-pool-two-5678")


@pytest.mark.unit
def test_masked_render_holds_no_secret(example: Config) -> None:
    secrets = load_secrets(example.secrets_path, {})
    files = {host_file.path: host_file for host_file in release_files(example, secrets, "v1")}
    assert set(files) == {
        "/opt/appliance/releases/v1/docker-compose.yml",
        "/opt/appliance/releases/v1/api.env",
        "/opt/appliance/releases/v1/postgres.env",
        "/opt/appliance/releases/v1/redis.env",
        "/opt/appliance/releases/v1/nginx/appliance.conf",
        "/opt/appliance/releases/v1/api.yml",
        "/opt/appliance/releases/v1/nginx/upstream.inc",
        "/opt/appliance/releases/v1/nginx/metrics.htpasswd",
        # monitoring.enabled (the default): tests/monitoring/ checks these
        "/opt/appliance/releases/v1/monitoring/prometheus.yml",
        "/opt/appliance/releases/v1/monitoring/alerts.yml",
        "/opt/appliance/releases/v1/monitoring/alertmanager.yml",
        "/opt/appliance/releases/v1/monitoring/notify.py",
        "/opt/appliance/releases/v1/relay.env",
    }
    everything = "".join(host_file.content for host_file in files.values())
    for secret in secrets.values.values():
        for part in secret.reveal().split(","):
            assert part not in everything
    assert f"AI_API_KEY={MASK}" in files["/opt/appliance/releases/v1/api.env"].content
    assert files["/opt/appliance/releases/v1/api.env"].mode == 0o600
    assert "MAX_CONCURRENT_AGENTS=10" in files["/opt/appliance/releases/v1/api.env"].content
    api = files["/opt/appliance/releases/v1/api.yml"].content
    assert "image: cvm-appliance/api:v1" in api
    assert "aliases: [api-v1]" in api
    assert "server api-v1:8000;" in files["/opt/appliance/releases/v1/nginx/upstream.inc"].content
    assert "llm-stub" not in files["/opt/appliance/releases/v1/docker-compose.yml"].content
    assert "CORS_ORIGINS=https://agents.example.com\n" in files["/opt/appliance/releases/v1/api.env"].content
    assert "server_name agents.example.com;" in files["/opt/appliance/releases/v1/nginx/appliance.conf"].content


@pytest.mark.unit
def test_reveal_writes_values(example: Config) -> None:
    secrets = load_secrets(example.secrets_path, {})
    files = {host_file.path: host_file.content for host_file in release_files(example, secrets, "v2", reveal=True)}
    assert "AI_API_KEY=sk-pool-one-1234,sk-pool-two-5678" in files["/opt/appliance/releases/v2/api.env"]
    password = secrets.require(["POSTGRES_PASSWORD"])["POSTGRES_PASSWORD"].reveal()
    assert f"POSTGRES_PASSWORD={password}" in files["/opt/appliance/releases/v2/postgres.env"]


@pytest.mark.unit
def test_limits_scale_with_host_memory() -> None:
    small, large = stack_limits(2048), stack_limits(16384)
    assert (small.api_memory, small.postgres_memory, small.redis_memory) == ("512m", "512m", "256m")
    assert large.api_memory == "4096m"
    assert small.redis_maxmemory == "192mb"


@pytest.mark.unit
def test_render_task_writes_readable_tree(example: Config, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "render",
            "--out",
            str(out),
            "--version",
            "v7",
            "--config",
            str(example.path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    compose = out / "opt/appliance/releases/v7/docker-compose.yml"
    assert str(compose) in run.stdout.splitlines()
    assert compose.read_text().startswith("# Rendered by cvm-appliance for agents (production), release v7.")
    assert stat.S_IMODE((out / "opt/appliance/releases/v7/api.env").stat().st_mode) == 0o600
    assert "sk-pool" not in run.stdout + run.stderr


@pytest.mark.integration
def test_rendered_compose_passes_docker_compose_config(example: Config, tmp_path: Path) -> None:
    secrets = load_secrets(example.secrets_path, {})
    write_tree(release_files(example, secrets, "v1", reveal=True), tmp_path / "host")
    release = tmp_path / "host/opt/appliance/releases/v1"
    for project, compose_file in (("agents", "docker-compose.yml"), ("agents-api-v1", "api.yml")):
        check = subprocess.run(
            ["docker-compose", "--project-name", project, "--file", compose_file, "config", "--quiet"],
            cwd=release,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr


@pytest.mark.unit
def test_release_slugs() -> None:
    assert release_slug("v1.2.0+build.7") == "v1-2-0-build-7"
    assert release_slug("2026-11-23T1701") == "2026-11-23t1701"
    with pytest.raises(ApplianceError):
        release_slug("+++")


@pytest.mark.unit
def test_one_name_for_a_release_image(example: Config) -> None:
    settings = example.settings
    assert api_image(settings, "v5") == "cvm-appliance/api:v5"
    images = settings.images.model_copy(update={"transport": "registry", "registry": "ccr.ccs.tencentyun.com/team"})
    via_registry = settings.model_copy(update={"images": images})
    assert api_image(via_registry, "v5") == "ccr.ccs.tencentyun.com/team/cvm-appliance/api:v5"
    secrets = load_secrets(example.secrets_path, {})
    config = Config(example.path, example.env, example.environments, via_registry)
    api = next(item for item in release_files(config, secrets, "v5") if item.path.endswith("/api.yml"))
    assert "image: ccr.ccs.tencentyun.com/team/cvm-appliance/api:v5" in api.content


def _with_tables(config: Config, tables: str, secrets: str = "") -> Config:
    """The example config with TOML tables appended (and secrets added), loaded and validated again."""
    with config.path.open("a", encoding="utf-8") as toml:
        toml.write(f"\n{tables}\n")
    with config.secrets_path.open("a", encoding="utf-8") as secrets_file:
        secrets_file.write(secrets)
    return load_config(config.path)


def _api_env(config: Config, reveal: bool = False) -> dict[str, str]:
    rendered = release_files(config, load_secrets(config.secrets_path, {}), "v1", reveal=reveal)
    text = next(item.content for item in rendered if item.path.endswith("/api.env"))
    return dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))


COS_KEY = "COS_SECRET_ID=AKIDartifacts\nCOS_SECRET_KEY=artifact-secret-key\n"


@pytest.mark.unit
def test_local_artifacts_render_no_cos_settings(example: Config) -> None:
    env = _api_env(example, reveal=True)
    assert env["ARTIFACT_STORAGE_PATH"] == "/var/lib/cvm-service/artifacts"
    assert [name for name in env if name.startswith(("COS_", "ARTIFACT_STORAGE_BACKEND"))] == []


@pytest.mark.unit
def test_cos_artifacts_take_region_and_endpoint_from_the_backup(example: Config) -> None:
    config = _with_tables(
        example,
        '[environments.production.backup]\ncos_region = "ap-guangzhou"\n'
        'cos_endpoint = "cos-internal.ap-guangzhou.tencentcos.cn"\n'
        '[environments.production.service]\nartifact_storage = "cos"\nartifact_cos_bucket = "artifacts-1250000000"\n',
        COS_KEY,
    )
    env = _api_env(config, reveal=True)
    assert {name: value for name, value in env.items() if name.startswith(("COS_", "ARTIFACT_STORAGE_"))} == {
        "ARTIFACT_STORAGE_PATH": "/var/lib/cvm-service/artifacts",  # uploads still spool on the volume
        "ARTIFACT_STORAGE_BACKEND": "cos",
        "COS_BUCKET": "artifacts-1250000000",
        "COS_REGION": "ap-guangzhou",
        "COS_SCHEME": "https",
        "COS_DOMAIN": "artifacts-1250000000.cos-internal.ap-guangzhou.tencentcos.cn",
        "COS_SECRET_ID": "AKIDartifacts",
        "COS_SECRET_KEY": "artifact-secret-key",
    }
    masked = _api_env(config)
    assert (masked["COS_SECRET_ID"], masked["COS_SECRET_KEY"]) == (MASK, MASK)


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (None, "https://artifacts-1250000000.cos.ap-shanghai.myqcloud.com/u/f"),
        ("cos.ap-beijing.myqcloud.com", "https://artifacts-1250000000.cos.ap-beijing.myqcloud.com/u/f"),
        ("http://172.17.0.1:9000", "http://172.17.0.1:9000/u/f"),  # the rig's local COS, by address
    ],
)
@pytest.mark.unit
def test_the_api_reaches_cos_where_the_backups_would(example: Config, endpoint: str | None, url: str) -> None:
    # The rendered env read by the service's own settings gives the request URL the backups' SDK config gives.
    own_endpoint = f'artifact_cos_endpoint = "{endpoint}"\n' if endpoint else ""
    config = _with_tables(
        example,
        '[environments.production.service]\nartifact_storage = "cos"\nartifact_cos_bucket = "artifacts-1250000000"\n'
        + own_endpoint,
        COS_KEY,
    )
    settings = load_settings(_api_env(config, reveal=True))
    service_url = cos_config(settings).uri(bucket=settings.cos_bucket, path="u/f")
    backup = CosTarget("artifacts-1250000000", "ap-shanghai", "AKIDartifacts", "artifact-secret-key", endpoint)
    assert service_url == backup.sdk_config().uri(bucket="artifacts-1250000000", path="u/f") == url


@pytest.mark.unit
def test_cos_artifacts_without_the_cos_key_are_refused_in_one_line(example: Config) -> None:
    config = _with_tables(
        example,
        '[environments.production.service]\nartifact_storage = "cos"\nartifact_cos_bucket = "artifacts-1250000000"\n',
    )
    check_artifact_key(example, load_secrets(example.secrets_path, {}))  # local storage needs no COS key
    with pytest.raises(ConfigError, match=r"secrets.env: service.artifact_storage is \"cos\": set COS_SECRET_ID and"):
        check_artifact_key(config, load_secrets(config.secrets_path, {}))
    run = subprocess.run(
        [sys.executable, "-m", "invoke", "config", "--config", str(config.path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={name: value for name, value in os.environ.items() if not name.startswith("COS_")},
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.startswith("error: ") and "COS_SECRET_KEY" in run.stderr and len(run.stderr.splitlines()) == 1


# The console alone; the team's front end at / (the console at /console/); at /app/ with a CDN origin.
FRONTENDS = ("", 'dist = "ui"\n', 'dist = "ui"\npath = "/app/"\ncdn_origin = "https://static.example.com"\n')


@pytest.mark.integration
@pytest.mark.parametrize("frontend", FRONTENDS)
def test_rendered_site_passes_nginx_t(example: Config, tmp_path: Path, frontend: str) -> None:
    """Debian's nginx accepts the site as rendered (the deploy checks it again in the nginx image)."""
    if frontend:
        example.path.write_text(example.path.read_text().replace('source = "console"\n', frontend, 1))
        example = load_config(example.path)
    secrets = load_secrets(example.secrets_path, {})
    files = {Path(item.path).name: item.content for item in release_files(example, secrets, "v1", reveal=True)}
    site = assert_nginx_accepts(tmp_path, files["appliance.conf"], files["upstream.inc"], example.settings.domain)
    policy = next(line for line in site.splitlines() if "Content-Security-Policy" in line)
    assert ("static.example.com" in policy) == ("cdn_origin" in frontend)
