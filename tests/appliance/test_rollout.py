"""Several app hosts: the config's rules, the roll's order, batches, locks and report (appliance/rollout.py), and a
host's part of a deploy run for real against local bash (lock folder, audit log) as appliance/deploy.py does it."""

from __future__ import annotations

import _thread
import dataclasses
import functools
import io
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from rich.console import Console

from appliance.bootstrap.layout import cron_entries
from appliance.bootstrap.tls import private_ca_certificate
from appliance.config import Config, load_config
from appliance.deploy import prepare_steps, required_secrets
from appliance.errors import SshError, StepFailed
from appliance.executor import Executor, StepResult, watching
from appliance.host_release import HostRelease, SwitchTraffic
from appliance.live import StepLines
from appliance.releases import Release
from appliance.rollout import (
    HostOutcome,
    failed_outcome,
    fan_out,
    lock_all,
    outcome_line,
    report_lines,
    require_all_ok,
    roll,
    waves,
)
from appliance.steps import Always, Note, Step
from appliance.views import status_sections
from tests.appliance.test_config import MINIMAL, error_of, write
from tests.appliance.test_executor import LocalHost, Outcome
from tests.conftest import REPO

pytestmark = pytest.mark.unit

TWO_HOSTS = """
[service]
artifact_storage = "cos"
artifact_cos_bucket = "files-1250000000"

[database]
host = "db.internal.example.com"
name = "appliance"
user = "appliance_app"
sslmode = "require"

[redis]
host = "redis.internal.example.com"
ca_file = "tencentdb-ca.pem"
"""
# The example hosts of tests/appliance/test_config.py's MINIMAL (its first one named), and two more.
TWO_HOSTS += (
    MINIMAL
    + """name = "app-1"
[[environments.production.hosts]]
address = "203.0.113.11"
[[environments.production.hosts]]
address = "127.0.0.1"
port = 2223
user = "ops"
"""
)


# --- the config ---


def test_several_hosts_with_shared_uploads_and_managed_data_load_each_with_a_stable_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TWO_HOSTS))
    assert [host.label for host in config.settings.hosts] == ["app-1", "203.0.113.11", "127.0.0.1:2223"]
    per_host = config.app_hosts()
    # Each per-host config acts on its host (first in hosts, where every per-host operation looks) and keeps the
    # others listed after it, in order (the private CA's scope names them all).
    assert [[host.label for host in item.settings.hosts] for item in per_host] == [
        ["app-1", "203.0.113.11", "127.0.0.1:2223"],
        ["203.0.113.11", "app-1", "127.0.0.1:2223"],
        ["127.0.0.1:2223", "app-1", "203.0.113.11"],
    ]
    # Whichever host a config acts on, the file's order stays known (the first host's Prometheus scrapes the others).
    picked = config.with_host("127.0.0.1:2223")
    for item in [*per_host, picked, *picked.app_hosts()]:
        assert [host.label for host in item.configured_hosts] == ["app-1", "203.0.113.11", "127.0.0.1:2223"]
    assert [host.vpc_address for host in config.settings.hosts] == ["203.0.113.10", "203.0.113.11", "127.0.0.1"]
    private = load_config(
        write(tmp_path, TWO_HOSTS.replace('name = "app-1"', 'name = "app-1"\nprivate_address = "10.0.0.7"'))
    )
    assert private.settings.hosts[0].vpc_address == "10.0.0.7" and private.settings.hosts[0].address == "203.0.113.10"


@pytest.mark.parametrize(
    ("given", "picked"),
    [("app-1", "app-1"), ("203.0.113.11", "203.0.113.11"), ("ops@127.0.0.1:2223", "127.0.0.1:2223")],
)
def test_host_flag_naming_a_configured_host_picks_it(tmp_path: Path, given: str, picked: str) -> None:
    config = load_config(write(tmp_path, TWO_HOSTS)).with_host(given)
    assert [item.settings.hosts[0].label for item in config.app_hosts()] == [picked]
    assert len(config.settings.hosts) == 3


def test_host_flag_naming_no_configured_host_replaces_them_as_before(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TWO_HOSTS)).with_host("ubuntu@198.51.100.7:2200")
    assert [item.settings.hosts[0].target for item in config.app_hosts()] == ["ubuntu@198.51.100.7:2200"]
    assert config.settings.hosts[0].key is None and config.picked is None


def test_several_hosts_with_local_uploads_is_one_line_naming_cos(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_HOSTS.replace('artifact_storage = "cos"', 'artifact_storage = "local"'))
    message = error_of(path)
    assert message == (
        f'{path}: (top level): hosts: 3 app hosts need shared uploads: set service.artifact_storage = "cos" '
        "(with local storage each host would keep its own files)"
    )


def test_several_hosts_on_the_stacks_own_data_containers_is_one_line_naming_managed_data(tmp_path: Path) -> None:
    without_redis = TWO_HOSTS.split("[redis]")[0] + "[environments" + TWO_HOSTS.split("[environments", 1)[1]
    message = error_of(write(tmp_path, without_redis))
    assert "hosts: 3 app hosts need managed data: set redis = { ... }" in message
    assert len(message.splitlines()) == 1
    neither = TWO_HOSTS.split("[database]")[0] + "[environments" + TWO_HOSTS.split("[environments", 1)[1]
    assert "set database and redis = { ... }" in error_of(write(tmp_path, neither))


def test_two_hosts_answering_to_one_name_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_HOSTS.replace('address = "203.0.113.11"', 'address = "203.0.113.11"\nname = "app-1"'))
    assert error_of(path).endswith('hosts: app-1 listed twice: give each host its own name = "..."')


def test_deploy_batch_is_validated(tmp_path: Path) -> None:
    path = write(
        tmp_path, TWO_HOSTS.replace("[environments.production]", "[deploy]\nbatch = 0\n[environments.production]")
    )
    assert "deploy.batch: Input should be greater than or equal to 1" in error_of(path)


# --- order and batches ---


def test_waves_put_the_canary_alone_then_batch_hosts_at_a_time() -> None:
    hosts = ["a", "b", "c", "d", "e"]
    assert waves(hosts, 1) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert waves(hosts, 2) == [["a"], ["b", "c"], ["d", "e"]]
    assert waves(hosts, 3) == [["a"], ["b", "c", "d"], ["e"]]
    assert waves(hosts, 10) == [["a"], ["b", "c", "d", "e"]]
    assert waves(["a"], 2) == [["a"]]
    assert waves([], 2) == []


@dataclass
class FakeChange:
    """A host's change that records what the roll asks of it (rollout.HostChange)."""

    host: str
    log: list[str]
    fails: bool = False
    held: bool = False
    serves: str = "v1"
    ran: threading.Event = field(default_factory=threading.Event)

    def lock(self, wait: bool) -> None:
        if self.held:
            raise StepFailed(f"root@{self.host}:22: deploy lock held by alice@laptop (deploy v7) for 40s")
        self.log.append(f"lock {self.host}")

    def unlock(self) -> None:
        self.log.append(f"unlock {self.host}")

    def run(self) -> HostOutcome:
        self.log.append(f"run {self.host}")
        self.ran.set()
        why = "never healthy\nhealth answer: certificate verify failed" if self.fails else ""
        results = [StepResult("health gate", "failed" if self.fails else "changed", 0.1, [], why)]
        return failed_outcome(self.host, results, "v1" if self.fails else "v2")

    def skip(self) -> HostOutcome:
        self.log.append(f"skip {self.host}")
        return HostOutcome(self.host, "not started", serving=self.serves)


def test_every_lock_is_taken_in_host_order_before_any_host_changes() -> None:
    log: list[str] = []
    changes = [FakeChange(name, log) for name in ("a", "b", "c")]
    outcomes = roll(changes, batch=1)
    assert log == ["lock a", "lock b", "lock c", "run a", "run b", "run c"]
    assert [outcome.status for outcome in outcomes] == ["ok", "ok", "ok"]
    assert report_lines(outcomes) == ["a: ok, serves v2", "b: ok, serves v2", "c: ok, serves v2"]


def test_a_held_lock_on_any_host_changes_nothing_and_names_that_host() -> None:
    log: list[str] = []
    changes = [FakeChange("a", log), FakeChange("b", log), FakeChange("c", log, held=True)]
    with pytest.raises(StepFailed, match=r"^root@c:22: deploy lock held by alice@laptop"):
        roll(changes, batch=1)
    assert log == ["lock a", "lock b", "unlock b", "unlock a"]


def test_a_failed_canary_stops_the_roll_and_the_others_keep_their_release() -> None:
    log: list[str] = []
    changes = [FakeChange("a", log, fails=True), FakeChange("b", log), FakeChange("c", log)]
    outcomes = roll(changes, batch=2)
    assert log == ["lock a", "lock b", "lock c", "run a", "skip b", "skip c"]
    assert report_lines(outcomes) == [
        "a: failed (health gate: never healthy), serves v1",
        "b: not started, serves v1",
        "c: not started, serves v1",
    ]
    with pytest.raises(StepFailed) as caught:
        require_all_ok(outcomes, "deploy of v2")
    # The reason in full, as one host's error gives it (the API's health answer after a failed gate).
    assert str(caught.value) == (
        "deploy of v2 failed on a; not started: b, c\na: health gate: never healthy\n"
        "health answer: certificate verify failed"
    )


def test_a_failure_in_a_batch_lets_that_batch_finish_and_stops_the_next() -> None:
    log: list[str] = []
    changes = [FakeChange("a", log), FakeChange("b", log, fails=True), FakeChange("c", log), FakeChange("d", log)]
    outcomes = roll(changes, batch=2)
    assert log[:4] == ["lock a", "lock b", "lock c", "lock d"]
    assert log[4] == "run a" and sorted(log[5:7]) == ["run b", "run c"] and log[7:] == ["skip d"]
    assert [outcome.status for outcome in outcomes] == ["ok", "failed", "ok", "not started"]


def test_a_batch_runs_its_hosts_at_the_same_time() -> None:
    """b's job waits for c's to start: it completes only if the two run at once (one thread per host)."""
    log: list[str] = []
    c = FakeChange("c", log)

    @dataclass
    class WaitsForC(FakeChange):
        def run(self) -> HostOutcome:
            assert c.ran.wait(10), "c never started while b ran"
            return super().run()

    outcomes = roll([FakeChange("a", log), WaitsForC("b", log), c], batch=2)
    assert [outcome.status for outcome in outcomes] == ["ok", "ok", "ok"]


def test_one_host_raising_is_that_hosts_failure_and_the_others_finish() -> None:
    def unreachable() -> HostOutcome:
        raise StepFailed("root@203.0.113.11:22: no answer within 10s: check the address, port and security group")

    def buggy() -> HostOutcome:
        raise KeyError("facts")

    done = fan_out(
        [("a", lambda: HostOutcome("a", "ok")), ("b", unreachable), ("c", buggy), ("d", lambda: HostOutcome("d", "ok"))]
    )
    assert [outcome_line(outcome) for outcome in done] == [
        "a: ok",
        "b: failed (root@203.0.113.11:22: no answer within 10s: check the address, port and security group)",
        "c: failed (unexpected KeyError: 'facts')",
        "d: ok",
    ]
    with pytest.raises(StepFailed, match=r"^bootstrap failed on b, c\nb: root@203.0.113.11:22: no answer"):
        require_all_ok(done, "bootstrap")


def test_lock_all_releases_nothing_it_did_not_take() -> None:
    log: list[str] = []
    with pytest.raises(StepFailed):
        lock_all([FakeChange("a", log, held=True), FakeChange("b", log)], wait=False)
    assert log == []


# --- what several hosts' steps look like ---


class Watcher:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def started(self, step: str) -> None:
        with self.lock:
            self.lines.append(f"start {step}")

    def command(self, verb: str, text: str) -> None:
        with self.lock:
            self.lines.append(f"{verb} {text}")

    def finished(self, result: StepResult) -> None:
        with self.lock:
            self.lines.append(f"end {result.step} {result.status}")


def test_step_lines_of_hosts_run_at_once_carry_their_host() -> None:
    watcher = Watcher()

    def job(host: str) -> HostOutcome:
        executor = Executor(LocalHost())
        return failed_outcome(host, executor.apply_all([Always("packages", "true", "install")]))

    with watching(watcher):
        done = fan_out([("app-1", lambda: job("app-1")), ("app-2", lambda: job("app-2"))])
    assert [outcome.results[0].step for outcome in done] == ["packages", "packages"]  # the tables keep the name
    assert sorted(line for line in watcher.lines if line.startswith(("start", "end"))) == [
        "end app-1: packages changed",
        "end app-2: packages changed",
        "start app-1: packages",
        "start app-2: packages",
    ]
    assert sorted(line for line in watcher.lines if line.startswith("run")) == ["run [app-1] true", "run [app-2] true"]


def test_hosts_after_the_canary_skip_backup_and_migrations_and_say_why() -> None:
    config = load_config(REPO / "appliance.example.toml")
    backup = config.settings.backup.model_copy(update={"enabled": True})
    backed = dataclasses.replace(config, settings=config.settings.model_copy(update={"backup": backup}))
    release = Release(backed.settings, "v2")
    canary = prepare_steps(backed, release, [])
    other = prepare_steps(backed, release, [], migrated_on="app-1")
    assert [step.name for step in canary][-2:] == ["backup", "migrations"]
    assert [step.name for step in other][-1] == "migrations" and "backup" not in [step.name for step in other]
    assert other[-1].plan({}) == [Note("skipped: they ran on app-1, the canary, under the advisory lock")]
    assert Executor(LocalHost()).apply(other[-1]).status == "ok"


def host_change(config: Config, tmp_path: Path, steps: list[Step], label: str = "app-1") -> HostRelease:
    """A host's deploy of v2 over v1 whose base_dir is `tmp_path` on this machine: lock and audit are real files."""
    settings = config.settings.model_copy(update={"base_dir": str(tmp_path)})
    Path(settings.paths.shared).mkdir(parents=True, exist_ok=True)
    announced: list[str] = []
    release = Release(settings, "v2")
    before = Release(settings, "v1")  # no folder here: restoring its stack after a failure fails harmlessly
    return HostRelease(
        LocalHost(),  # type: ignore[arg-type]
        Executor(LocalHost()),
        "deploy",
        release,
        before,
        steps,
        lambda entry, error: announced.append(str(entry["result"])),
        label,
    )


def audit(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "shared" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_host_deployed_in_a_roll_is_locked_audited_and_reports_what_it_serves(tmp_path: Path) -> None:
    config = load_config(REPO / "appliance.example.toml")
    steps: list[Step] = [Always("stack up", "true", "up"), SwitchTraffic("switch traffic", "true", "nginx")]
    change = host_change(config, tmp_path, steps)
    change.lock()
    assert (tmp_path / "shared" / "deploy.lock" / "holder.json").is_file()
    outcome = change.run()
    assert outcome_line(outcome) == "app-1: ok, serves v2"
    assert not (tmp_path / "shared" / "deploy.lock").exists()
    assert [(entry["command"], entry["version"], entry["result"]) for entry in audit(tmp_path)] == [
        ("deploy", "v2", "ok")
    ]


def test_a_host_failing_before_the_switch_keeps_serving_and_one_not_started_is_audited(tmp_path: Path) -> None:
    config = load_config(REPO / "appliance.example.toml")
    failing: list[Step] = [Always("stack up", "echo broken >&2; false", "up"), SwitchTraffic("switch", "true", "x")]
    first = host_change(config, tmp_path / "a", failing)
    second = host_change(config, tmp_path / "b", [SwitchTraffic("switch", "true", "x")], "app-2")
    outcomes = roll([first, second], batch=1)
    assert report_lines(outcomes) == [
        "app-1: failed (stack up: up: broken), serves v1",
        "app-2: not started, serves v1",
    ]
    assert [entry["result"] for entry in audit(tmp_path / "a")] == ["failed"]
    assert [entry["result"] for entry in audit(tmp_path / "b")] == ["not started"]
    assert not (tmp_path / "a" / "shared" / "deploy.lock").exists()
    assert not (tmp_path / "b" / "shared" / "deploy.lock").exists()


def test_status_of_one_of_several_hosts_says_whether_it_is_drained(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TWO_HOSTS)).with_host("127.0.0.1:2223")
    settings = config.settings.model_copy(update={"base_dir": str(tmp_path / "base")})
    sections = dict(status_sections(settings, None))
    assert "load balancer" not in dict(status_sections(settings.model_copy(update={"hosts": settings.hosts[:1]}), None))
    assert LocalHost().run(sections["load balancer"]).stdout == "in service (not drained)\n"
    Path(settings.paths.drain_flag).parent.mkdir(parents=True)
    Path(settings.paths.drain_flag).write_text('{"who": "alice@laptop", "since": "2026-12-02T06:00:00+00:00"}\n')
    assert LocalHost().run(sections["load balancer"]).stdout == (
        'drained: {"who": "alice@laptop", "since": "2026-12-02T06:00:00+00:00"} (inv host.undrain 127.0.0.1:2223)\n'
    )


def test_ctrl_c_lets_the_hosts_under_way_finish_then_skips_the_rest() -> None:
    log: list[str] = []

    @dataclass
    class Interrupted(FakeChange):
        def run(self) -> HostOutcome:
            _thread.interrupt_main()  # the operator's Ctrl-C, while this host works
            time.sleep(0.3)
            return super().run()

    # Python's Ctrl-C handler, as under an operator's terminal: CI starts the tests in the background of a shell
    # without job control, with SIGINT ignored, and interrupt_main() then does nothing (#21's follow test).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            roll([FakeChange("a", log), Interrupted("b", log), FakeChange("c", log)], batch=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert log == ["lock a", "lock b", "lock c", "run a", "run b", "skip c"]


def test_several_hosts_bootstrap_under_one_private_ca_made_before_their_threads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hosts' threads each issue their leaf from the CA: made first, once, they all sign with the same one."""
    import tasks

    config = load_config(write(tmp_path, TWO_HOSTS))
    tasks.one_private_ca(config)
    assert "a new private CA in" in capsys.readouterr().out
    hosts = config.app_hosts()
    issued = fan_out(
        [(host.settings.hosts[0].label, functools.partial(_issue_with_the_ca_there, host)) for host in hosts]
    )
    assert [outcome.status for outcome in issued] == ["ok", "ok", "ok"]
    assert len({outcome.serving for outcome in issued}) == 1  # one CA certificate
    assert (config.ca_path / "ca.pem").read_text() == issued[0].serving
    tasks.one_private_ca(config)
    assert capsys.readouterr().out == ""  # it serves every host: not made again


def _issue_with_the_ca_there(host: Config) -> HostOutcome:
    step = private_ca_certificate(host)
    assert step.ca_certificate is not None and step.new_ca_note is None
    files = step.ca.issue(host.settings.hosts[0].address, datetime.now(timezone.utc))
    return HostOutcome(host.settings.hosts[0].label, "ok", serving=files["ca.pem"].decode())


def test_of_several_hosts_only_the_first_takes_the_scheduled_backups() -> None:
    config = load_config(REPO / "appliance.example.toml")
    backup = config.settings.backup.model_copy(update={"enabled": True})
    second = config.settings.hosts[0].model_copy(update={"address": "203.0.113.11"})
    settings = config.settings.model_copy(update={"backup": backup, "hosts": [config.settings.hosts[0], second]})
    several = dataclasses.replace(config, settings=settings)
    cron = f"/etc/cron.d/{settings.name}-backup"
    kinds = {}
    for host in several.app_hosts():
        steps = cron_entries(host.settings, host.on_first_host)
        kinds[host.settings.hosts[0].label] = [
            step.name for step in steps if cron in step.name or "backup" in step.name
        ]
    assert kinds == {"203.0.113.10": [f"file {cron}"], "203.0.113.11": ["backup cron off"]}
    one = dataclasses.replace(config, settings=config.settings.model_copy(update={"backup": backup}))
    assert [step.name for step in cron_entries(one.settings, one.on_first_host)][-1] == f"file {cron}"  # as before


def test_several_hosts_with_monitoring_need_the_metrics_password_before_any_build(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, TWO_HOSTS)).settings
    assert "METRICS_PASSWORD" in required_secrets(settings)
    assert "METRICS_PASSWORD" not in required_secrets(settings.model_copy(update={"hosts": settings.hosts[:1]}))
    quiet = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={"enabled": False})})
    assert "METRICS_PASSWORD" not in required_secrets(quiet)


def test_the_live_display_shows_every_host_s_running_step() -> None:
    screen = Console(file=io.StringIO(), width=100, record=True)
    lines = StepLines(screen)
    lines.started("app-1: packages")
    lines.started("app-2: docker engine")
    screen.print(lines.__rich__())
    assert [
        "app-1: packages" in line or "app-2: docker engine" in line for line in screen.export_text().splitlines()
    ] == [
        True,
        True,
    ]
    lines.finished(StepResult("app-1: packages", "changed", 1.0))
    screen.print(lines.__rich__())
    after = screen.export_text().splitlines()
    assert "changed  app-1: packages" in after[0] and "app-2: docker engine" in after[1] and len(after) == 2


class DroppingHost(LocalHost):
    """Local bash, until a command that the SSH session does not survive."""

    def run(self, command: str, timeout: int | None = None) -> Outcome:
        if "drop-the-session" in command:
            raise SshError("root@203.0.113.11:22: the SSH session was lost")
        return super().run(command, timeout)


def test_a_host_whose_session_drops_mid_roll_is_failed_with_its_steps_and_stops_the_roll(tmp_path: Path) -> None:
    config = load_config(REPO / "appliance.example.toml")
    steps: list[Step] = [Always("stack up", "true", "up"), Always("migrations", "drop-the-session", "migrate")]
    first = host_change(config, tmp_path / "a", steps)
    first.executor = Executor(DroppingHost())
    second = host_change(config, tmp_path / "b", [SwitchTraffic("switch", "true", "x")], "app-2")
    outcomes = roll([first, second], batch=1)
    assert report_lines(outcomes) == [
        "app-1: failed (root@203.0.113.11:22: the SSH session was lost), serves v1",
        "app-2: not started, serves v1",
    ]
    assert [result.step for result in outcomes[0].results] == ["stack up"]
    assert [entry["result"] for entry in audit(tmp_path / "a")] == ["failed"]
