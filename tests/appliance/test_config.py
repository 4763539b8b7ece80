"""The config model: valid files load, broken ones fail with FILE: field: message, before any host."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.errors import ConfigError
from tests.conftest import REPO, inv

pytestmark = pytest.mark.unit

MINIMAL = """
[environments.production]
[[environments.production.hosts]]
address = "203.0.113.10"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, env: str | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env)
    return str(caught.value)


def test_example_config_is_valid_in_every_environment() -> None:
    example = REPO / "appliance.example.toml"
    production = load_config(example, "production")
    staging = load_config(example, "staging")
    assert production.environments == ("production", "staging")
    assert production.settings.tls.mode == "acme"
    assert production.settings.service.agent_cap == 10
    assert staging.settings.service.agent_cap == 4  # inline-table override merged over [service]
    assert staging.settings.service.agent_timeout == 300  # and the rest of [service] kept
    assert staging.settings.hosts[0].user == "ubuntu"


def test_defaults_match_the_service_contract(tmp_path: Path) -> None:
    service = load_config(write(tmp_path, MINIMAL)).settings.service
    assert (service.agent_cap, service.agent_timeout, service.workflow_timeout, service.max_tokens) == (
        10,
        300,
        1800,
        4000,
    )
    assert service.model_name == "deepseek-chat"


def test_only_environment_is_chosen_without_env(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("production", "sandbox"))
    assert load_config(path).env == "sandbox"


def test_wrong_type_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[service]\nagent_cap = "ten"\n')
    assert error_of(path) == f"{path}: service.agent_cap: Input should be a valid integer"


def test_string_number_is_not_coerced(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[service]\nagent_cap = "10"\n')
    assert "service.agent_cap: Input should be a valid integer" in error_of(path)


def test_unknown_key_suggests_the_near_miss(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[service]\nagent_cpa = 3\n")
    assert error_of(path) == f"{path}: service.agent_cpa: unknown key (did you mean 'agent_cap'?)"


def test_unknown_key_inside_a_host_names_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'adress = "x"\n')
    assert error_of(path) == (f"{path}: environments.production.hosts.0.adress: unknown key (did you mean 'address'?)")


def test_missing_required_field(tmp_path: Path) -> None:
    path = write(tmp_path, "[environments.production]\nname = 'x'\n")
    assert error_of(path) == (
        f"{path}: hosts: required, missing (set it at top level or under [environments.production])"
    )


def test_every_environment_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[environments.staging.service]\nworkers = 0\n")
    message = error_of(path, "production")
    assert "environments.staging.service.workers: Input should be greater than or equal to 1" in message


def test_cross_field_rules(tmp_path: Path) -> None:
    acme = write(tmp_path, MINIMAL + '\n[tls]\nmode = "acme"\nacme_email = "ops@example.com"\n')
    assert error_of(acme) == f"{acme}: (top level): tls.mode 'acme' needs a domain"
    backup = write(tmp_path, MINIMAL + '\n[backup]\nenabled = true\ncos_bucket = "b-125"\nage_recipient = "x"\n')
    assert "backup: enabled backups need age_recipient" in error_of(backup)
    cron = write(tmp_path, MINIMAL + '\n[backup]\nschedule = "daily"\n')
    assert "backup.schedule: must be a 5-field cron schedule" in error_of(cron)


def test_not_toml_and_missing_file_and_unknown_env(tmp_path: Path) -> None:
    broken = write(tmp_path, "name = \n")
    assert error_of(broken).startswith(f"{broken}: not valid TOML:")
    assert "not found (copy appliance.example.toml" in error_of(tmp_path / "nope.toml")
    assert error_of(write(tmp_path, MINIMAL), "staging").endswith(
        "environments.staging: not defined (defined: production)"
    )


def test_host_override_keeps_key_and_parses_port(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + 'key = "k/id"\n')).with_host("ubuntu@cvm.example:2200")
    host = config.settings.hosts[0]
    assert (host.user, host.address, host.port, host.key) == ("ubuntu", "cvm.example", 2200, "k/id")
    assert config.resolve("k/id") == tmp_path / "k/id"
    with pytest.raises(ConfigError, match="expected USER@ADDRESS"):
        config.with_host("root@@x")


def test_cli_exits_2_with_one_line_and_never_connects(tmp_path: Path) -> None:
    """A broken config stops `inv facts` before SSH: a listener on the host's port sees no connection."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    path = write(tmp_path, MINIMAL.replace("203.0.113.10", "127.0.0.1") + f"port = {port}\nbogus = 1\n")
    run = inv("facts", "--config", str(path))
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {path}: environments.production.hosts.0.bogus: unknown key"
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


@pytest.mark.parametrize(
    "domain", ["agents example com", "https://agents.example.com/", "agents.example.com.", "agents.example.com/"]
)
def test_a_domain_that_is_not_a_host_name_exits_2_naming_the_field(tmp_path: Path, domain: str) -> None:
    path = write(tmp_path, f'domain = "{domain}"\n' + MINIMAL)
    run = inv("config", "--config", str(path))
    assert run.returncode == 2, run.stdout + run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: domain: {domain!r} is not a host name: write it as agents.example.com")


@pytest.mark.parametrize(
    "url", ["agents.example.com", "http://agents.example.com", "https://agents.example.com/", "https://a b.example.com"]
)
def test_public_url_must_be_an_https_origin(tmp_path: Path, url: str) -> None:
    assert error_of(write(tmp_path, f'public_url = "{url}"\n' + MINIMAL)).endswith(
        "public_url: must be an origin such as https://agents.example.com or https://203.0.113.10:8443"
    )


def test_good_names_and_origins_pass(tmp_path: Path) -> None:
    text = 'domain = "agents.xn--fiqs8s.example.com"\npublic_url = "https://[2001:db8::1]:8443"\n' + MINIMAL
    settings = load_config(write(tmp_path, text)).settings
    assert (settings.domain, settings.public_url) == ("agents.xn--fiqs8s.example.com", "https://[2001:db8::1]:8443")


def test_cos_artifacts_need_a_bucket(tmp_path: Path) -> None:
    text = MINIMAL + '\n[environments.production.service]\nartifact_storage = "cos"\n'
    assert error_of(write(tmp_path, text)).endswith(
        "environments.production.service: artifact_storage 'cos' needs artifact_cos_bucket (NAME-APPID)"
    )


def test_example_config_names_every_key() -> None:
    """appliance.example.toml is the reference: each key of the model appears in its table, set or commented."""
    from pydantic import BaseModel

    from appliance.config import Settings

    text = (REPO / "appliance.example.toml").read_text(encoding="utf-8")
    tables: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        header = line.strip().lstrip("# ").strip()
        if header.startswith("[") and header.endswith("]") and "=" not in header:
            current = header.strip("[]")
        tables[current] = tables.get(current, "") + line + "\n"

    def missing(model: type[BaseModel], table: str) -> list[str]:
        gaps = []
        for name, field in model.model_fields.items():
            nested = field.annotation if isinstance(field.annotation, type) else None
            if nested is not None and issubclass(nested, BaseModel):
                gaps += missing(nested, f"{table}.{name}".strip("."))
            elif not any(
                line.lstrip("# ").startswith(f"{name} =") for line in tables.get(table, "").splitlines()
            ) and not (name == "hosts" and "[[environments.production.hosts]]" in text):
                gaps.append(f"[{table}] {name}" if table else name)
        return gaps

    gaps = missing(Settings, "")
    assert not gaps, f"keys the example does not mention: {gaps}"


@pytest.mark.parametrize("storage", ["local", "cos"])
def test_a_second_host_without_shared_data_is_refused_in_one_line(tmp_path: Path, storage: str) -> None:
    """Several hosts need COS uploads and managed data (tests/appliance/test_rollout.py: when they load)."""
    second = '[[environments.production.hosts]]\naddress = "203.0.113.11"\n'
    uploads = f'[service]\nartifact_storage = "{storage}"\nartifact_cos_bucket = "files-1250000000"\n'
    path = write(tmp_path, MINIMAL + second + uploads)
    message = error_of(path)
    assert message.startswith(f"{path}: (top level): hosts: 2 app hosts need "), message
    assert len(message.splitlines()) == 1
    wanted = 'set service.artifact_storage = "cos"' if storage == "local" else "set database and redis = { ... }"
    assert wanted in message, message
