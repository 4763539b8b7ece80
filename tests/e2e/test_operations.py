"""Day-2 operations on the deployed sandbox: status, logs, the lock, and the host's own scripts."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from appliance.config import Config
from appliance.remote import RemoteHost, open_host
from appliance.secrets import load_secrets
from tests.conftest import Deployed, inv
from tests.e2e.traffic import Site
from tests.monitoring.test_notify import WecomRobot, robot  # noqa: F401 - the robot fixture

pytestmark = pytest.mark.e2e
BIN = "/opt/appliance/bin"
LOCK = "/opt/appliance/shared/deploy.lock"


@pytest.fixture(scope="module")
def secret_values(config: Config) -> list[str]:
    """Every secret the deploy generated or was given, and each key of the key pool."""
    values = [secret.reveal() for secret in load_secrets(config.secrets_path).values.values()]
    return [part for value in values for part in {value, *value.split(",")} if len(part) >= 6]


def assert_no_secret(text: str, secret_values: list[str], where: str) -> None:
    leaked = [value[:3] + "…" for value in secret_values if value in text]
    assert not leaked, f"secret values in {where}: {leaked}"


def healthy(containers: str, service: str) -> bool:
    return any(service in line and "(healthy)" in line for line in containers.splitlines())


def test_status_shows_containers_health_disk_and_memory(config: Config, secret_values: list[str]) -> None:
    # Docker runs an API's first health check one interval (15 s) after it starts: until then `inv status`
    # rightly says "health: starting", and an earlier test may have deployed moments ago.
    deadline = time.monotonic() + 60
    while True:
        run = inv("status", "--config", str(config.path))
        assert run.returncode == 0, run.stderr
        sections = {part.splitlines()[0]: part for part in run.stdout.split("\n== ")[1:]}
        containers = sections.get("containers", "")
        services = ("postgres", "redis", "nginx", "api")
        if all(healthy(containers, service) for service in services) or time.monotonic() > deadline:
            break
        time.sleep(3)
    release = run.stdout.splitlines()[0].split("release ")[1].strip()
    assert {"containers", f"health of release {release}", "resources", "disk", "memory"} <= set(sections)
    for service in services:
        assert healthy(containers, service), containers
    assert json.loads(sections[f"health of release {release}"].splitlines()[1])["database"]["connected"] is True
    assert "/var/lib/docker" in sections["disk"] and "Mem:" in sections["memory"]
    assert_no_secret(run.stdout + run.stderr, secret_values, "inv status")


def test_logs_show_a_service_and_refuse_an_unknown_one(config: Config) -> None:
    nginx = inv("logs", "--service", "nginx", "--lines", "20", "--config", str(config.path))
    assert nginx.returncode == 0, nginx.stderr
    assert "GET /api/health" in nginx.stdout or "nginx" in nginx.stdout, nginx.stdout[-500:]
    unknown = inv("logs", "--service", "mysql", "--config", str(config.path))
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("error: --service: 'mysql' is not one of api, postgres, redis, nginx")


def test_no_secret_in_deploy_output_or_on_the_hosts_logs(
    deployed: Deployed, host: RemoteHost, secret_values: list[str]
) -> None:
    assert_no_secret(deployed.first_run.stdout + deployed.first_run.stderr, secret_values, "inv deploy's output")
    raw = host.run(
        "cd /opt/appliance/current && for p in $(docker ps -a --format '{{.Names}}'); do docker logs $p 2>&1; done; "
        "cat /opt/appliance/shared/audit.jsonl; journalctl --no-pager -q"
    ).stdout
    assert len(raw) > 1000  # the logs really were read
    assert_no_secret(raw, secret_values, "the host's container logs, audit log and journal")


def test_a_stale_lock_is_named_then_broken_with_an_audit_entry(config: Config, host: RemoteHost) -> None:
    holder = {"who": "carol@old-laptop", "command": "deploy", "version": "v8", "since": time.time() - 7300}
    host.run(f"mkdir {LOCK} && echo '{json.dumps(holder)}' > {LOCK}/holder.json")
    refused = inv("deploy", "--version", "v8", "--image", "cvm-appliance/api:v1", "--config", str(config.path))
    assert refused.returncode == 4
    assert "held by carol@old-laptop (deploy v8) for 730" in refused.stderr
    assert "looks stale" in refused.stderr and "inv lock.break" in refused.stderr
    broken = inv("lock.break", "--config", str(config.path))
    assert broken.returncode == 0, broken.stderr
    assert "deploy lock removed (carol@old-laptop (deploy v8), held for 730" in broken.stdout
    assert host.run(f"test -e {LOCK}").exit_code != 0
    entry = json.loads(host.run("tail -n 1 /opt/appliance/shared/audit.jsonl").stdout)
    assert entry["command"] == "lock.break" and "carol@old-laptop" in entry["holder"]


def test_wait_takes_the_lock_once_its_holder_lets_go_and_the_outcome_is_announced(
    config: Config,
    host: RemoteHost,
    robot: WecomRobot,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    current = host.run("basename $(readlink /opt/appliance/current)").stdout.strip()
    announcing = tmp_path / "announcing.toml"
    announcing.write_text(config.path.read_text().replace("deploys = false", "deploys = true"))
    holder = {"who": "dave@ci", "command": "deploy", "version": "v9", "since": time.time()}
    host.run(f"mkdir {LOCK} && echo '{json.dumps(holder)}' > {LOCK}/holder.json")
    release = threading.Timer(4, lambda: _remove_lock(config))
    release.start()
    started = time.monotonic()
    run = inv("rollback", "--to", current, "--wait", "--config", str(announcing), env={"WECOM_WEBHOOK_URL": robot.url})
    release.join()
    assert run.returncode == 0, run.stdout + run.stderr
    assert time.monotonic() - started >= 4
    assert len(robot.received) == 1, run.stderr
    message = robot.received[0]["markdown"]["content"]
    assert f"appliance (sandbox): rollback {current} ok" in message and "took: " in message


def _remove_lock(config: Config) -> None:
    with open_host(config) as remote:
        remote.run(f"rm -rf {LOCK}")


def test_health_check_script_says_one_line_and_fails_when_redis_stops(host: RemoteHost) -> None:
    healthy = host.run(f"{BIN}/health-check.sh appliance")
    assert healthy.exit_code == 0 and healthy.stdout.startswith("OK: release "), healthy.stdout + healthy.stderr
    assert len(healthy.stdout.strip().splitlines()) == 1
    host.run("cd /opt/appliance/current && /opt/appliance/bin/compose --project-name appliance stop redis")
    try:
        broken = host.run(f"{BIN}/health-check.sh appliance")
    finally:
        host.run("cd /opt/appliance/current && /opt/appliance/bin/compose --project-name appliance start redis")
    assert broken.exit_code == 1
    assert broken.stdout.startswith("UNHEALTHY: release ") and "redis exited/" in broken.stdout
    deadline = time.monotonic() + 60
    while host.run(f"{BIN}/health-check.sh appliance").exit_code != 0:
        assert time.monotonic() < deadline, "the stack did not come back after redis started again"
        time.sleep(2)


def test_support_bundle_has_the_logs_and_no_secret(host: RemoteHost, secret_values: list[str], tmp_path: Path) -> None:
    made = host.run(f"{BIN}/log-collection.sh appliance /var/tmp/support")
    assert made.exit_code == 0, made.stderr
    bundle = made.stdout.strip()
    listing = host.run(f"tar -tzf {bundle}").stdout
    for part in ("logs/api.txt", "logs/postgres.txt", "state/containers.txt", "state/audit.jsonl"):
        assert f"/{part}" in listing, listing
    unpack = f"mkdir -p /var/tmp/support/x && tar -xzf {bundle} -C /var/tmp/support/x"
    text = host.run(f"{unpack} && find /var/tmp/support/x -type f -exec cat {{}} +").stdout
    host.run("rm -rf /var/tmp/support")
    assert "Booting worker" in text or "Listening at" in text  # gunicorn's own lines made it in
    assert_no_secret(text, secret_values, "the support bundle")


def test_os_update_script_leaves_the_stack_serving(host: RemoteHost) -> None:
    run = host.run(f"{BIN}/update.sh appliance", timeout=600)
    assert run.exit_code == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1].startswith("update: done, OK: release ")


def test_cron_writes_the_containers_state_for_monitoring(host: RemoteHost) -> None:
    metrics = "/opt/appliance/shared/metrics/containers.prom"
    deadline = time.monotonic() + 75  # cron runs it every minute
    while host.run(f"test -s {metrics}").exit_code != 0:
        assert time.monotonic() < deadline, "container-metrics.sh did not run from cron"
        time.sleep(3)
    text = host.run(f"cat {metrics}").stdout
    assert 'appliance_container_running{project="appliance",service="postgres"} 1' in text, text


def test_sandbox_login_prints_a_console_login_that_works_and_the_same_one_again(
    deployed: Deployed, site: Site, tmp_path: Path
) -> None:
    saved, ca = tmp_path / "login.json", tmp_path / "ca.pem"
    args = ("sandbox.login", "--config", str(deployed.sandbox.config_file), "--saved", str(saved), "--ca-out", str(ca))
    site.use_up_login_allowance()  # as a busy operator's address may have: the login waits its turn
    first, again = inv(*args), inv(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout == again.stdout  # made once, then only checked
    login = json.loads(saved.read_text())
    assert saved.stat().st_mode & 0o777 == 0o600
    url = f"https://127.0.0.1:{deployed.sandbox.https_port}/"
    assert first.stdout.splitlines()[-1] == f"console: {url}  login: {login['email']} / {login['password']}"
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    saved.write_text(json.dumps({**login, "password": "not-the-password"}))
    refused = inv(*args)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        f"the console login in {saved} does not work here: delete that file and run again"
    )
