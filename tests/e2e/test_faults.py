"""#16's fault table (docs/reliability.md): each fault injected into a running stack, and what users see.

All the faults share one destructive sandbox of this module's own (backups on, to a local COS). The tests run in
file order; each one restores what it broke and proves the stack healthy before it ends, so the next one starts
from a serving release. The reboot goes last: it costs the most and leaves a deploy lock behind.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import httpx
import pytest

from appliance import sandbox as sandboxes
from appliance.config import load_config
from appliance.remote import RemoteHost, open_host
from tests.conftest import REPO, SandboxFactory, bootstrap_sandbox, deploy_sandbox, inv
from tests.e2e.conftest import BUCKET, SECRET_ID, SECRET_KEY, bridge_cos, with_backups
from tests.e2e.test_deploy import assert_stack_runs_release
from tests.e2e.test_reboot import serving_within
from tests.e2e.traffic import Site, events

pytestmark = pytest.mark.e2e

# A turn whose LLM goes silent fails after this many seconds (the default is 300): the LLM cut lasts about this
# long instead of #16's 60 s, and what it proves is the same (docs/reliability.md).
AGENT_TIMEOUT = 15
PANEL = ["bull", "bear", "risk"]
TURNS = len(PANEL) + 1  # one round, then the moderator
# About 2 s per turn through the stand-in: long enough to fault a discussion between its turns, short enough
# that one finishes in seconds once the fault is gone.
STEADY = "[[fake:delay=0.05,words=40]]"
BASE = "/opt/appliance"
T = TypeVar("T")


@dataclass(frozen=True)
class Faults:
    sandbox: sandboxes.Sandbox
    config_file: Path
    name: str  # the stack's name: Compose project, volume and network prefix
    site: Site


@pytest.fixture(scope="module")
def faults(module_sandbox_factory: SandboxFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    """The module's own sandbox: backups on, AGENT_TIMEOUT short, v1 deployed."""
    fake = bridge_cos(SECRET_ID, SECRET_KEY, BUCKET)
    sandbox = module_sandbox_factory("faults")
    text = sandbox.config_file.read_text(encoding="utf-8")
    shorter = text.replace("[service]\n", f"[service]\nagent_timeout = {AGENT_TIMEOUT}\n", 1)
    assert shorter != text, "the sandbox's config has no [service] table any more"
    sandbox.config_file.write_text(shorter, encoding="utf-8")
    config = with_backups(sandbox, tmp_path_factory.mktemp("faults"), fake)
    bootstrap_sandbox(sandbox)
    deploy_sandbox(sandbox)
    with open_host(config) as host:
        site = Site(sandbox.https_port, host.run(f"cat {BASE}/shared/certs/ca.pem").stdout)
    yield Faults(sandbox, sandbox.config_file, config.settings.name, site)
    fake.stop()


@pytest.fixture()
def host(faults: Faults) -> Iterator[RemoteHost]:
    with open_host(load_config(faults.config_file)) as remote:
        yield remote


# --- helpers ------------------------------------------------------------------------------------------------------


def wait_for(check: Callable[[], T | None], seconds: float, what: str) -> T:
    """`check()`'s first truthy answer, polled every 0.2 s for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while (answer := check()) is None or answer is False:
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.2)
    return answer


def run(host: RemoteHost, command: str) -> str:
    """`command`'s stdout on the host; it must succeed."""
    result = host.run(command)
    assert result.exit_code == 0, f"{command}: {result.stdout}{result.stderr}"
    return str(result.stdout).strip()


def container(host: RemoteHost, service: str) -> str:
    """The id of the stack's running container of `service` (the API: the serving release's)."""
    ids = run(host, f"docker ps -q --filter label=com.docker.compose.service={shlex.quote(service)}").split()
    assert len(ids) == 1, f"{service}: containers {ids}"
    return ids[0]


def discussion(site: Site, user: dict[str, str], discussion_id: str) -> dict[str, Any]:
    """The discussion as its user reads it, with its messages."""
    with site.client() as client:
        answer = client.get(f"/api/discussions/{discussion_id}", headers=user)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def completed_messages(site: Site, user: dict[str, str], discussion_id: str) -> dict[int, str]:
    """turn index → content of each completed message, read through the API (so from PostgreSQL)."""
    messages = discussion(site, user, discussion_id)["messages"]
    return {m["turn_index"]: m["content"] for m in messages if m["status"] == "completed"}


def finished(site: Site, user: dict[str, str], discussion_id: str, seconds: float) -> dict[str, Any]:
    """The discussion once it has a final status (anything but queued, running or stopping)."""

    def final() -> dict[str, Any] | None:
        try:
            found = discussion(site, user, discussion_id)
        except (httpx.HTTPError, AssertionError):  # the API restarting, or PostgreSQL on its way back
            return None
        return found if found["status"] not in ("queued", "running", "stopping") else None

    return wait_for(final, seconds, f"discussion {discussion_id} finished")


def first_completed(site: Site, user: dict[str, str], discussion_id: str) -> dict[int, str]:
    """The completed messages once there is at least one (the fault then lands between turns)."""
    return wait_for(lambda: completed_messages(site, user, discussion_id) or None, 30, "a first completed message")


def assert_stream_whole(site: Site, user: dict[str, str], discussion_id: str, status: str) -> list[dict[str, Any]]:
    """The discussion's events read again from the start: seq 1..N with no gap, each turn announced exactly once,
    ending with `status`."""
    seen = site.read_to_end(user, discussion_id, timeout=20)
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    announced = [e["message"]["turn_index"] for e in seen if e["type"] in ("message_completed", "agent_failed")]
    assert sorted(announced) == list(range(TURNS if status == "completed" else len(PANEL))), announced
    assert seen[-1]["status"] == status, seen[-1]
    return seen


def health(site: Site) -> tuple[int, dict[str, Any]]:
    """/api/health through nginx: its status code and body (0 and {} without an answer)."""
    try:
        with site.client() as client:
            answer = client.get("/api/health", timeout=5)
        return answer.status_code, answer.json() if answer.status_code in (200, 503) else {}
    except (httpx.HTTPError, json.JSONDecodeError):
        return 0, {}


def assert_healthy(site: Site, seconds: float = 60) -> None:
    """200 from /api/health with PostgreSQL and Redis connected, within `seconds`."""
    wait_for(lambda: health(site)[1].get("status") == "ok", seconds, "the stack healthy again")


@dataclass
class HealthWatch:
    """/api/health through nginx every 0.2 s in a thread: the codes it answered, in order, without repeats."""

    site: Site
    codes: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        while not self._stop.wait(0.2):
            code = health(self.site)[0]
            if not self.codes or self.codes[-1] != code:
                self.codes.append(code)


@contextmanager
def watching_health(site: Site) -> Iterator[HealthWatch]:
    watch = HealthWatch(site)
    thread = threading.Thread(target=watch.poll, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch._stop.set()
        thread.join()


def api_metric(host: RemoteHost, name: str) -> float:
    """A sample of the serving API's /metrics, read inside its container."""
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/metrics', timeout=5).read().decode())"
    text = run(host, f"docker exec {container(host, 'api')} python3 -c {shlex.quote(script)}")
    values = [float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def runs_a_discussion(site: Site, user: dict[str, str]) -> None:
    """A short discussion completes: the slots, the queue, the stream and the LLM all serve."""
    new = site.create_discussion(user, "Quick check of ACME? [[fake:words=8]]", PANEL)
    done = finished(site, user, new, 60)
    assert done["status"] == "completed", done
    assert len(completed_messages(site, user, new)) == TURNS


# --- the faults, in the order of docs/reliability.md's table ------------------------------------------------------


def test_postgres_killed_mid_discussion_pauses_it_and_loses_nothing(faults: Faults, host: RemoteHost) -> None:
    site = faults.site
    user = site.new_user()
    running = site.create_discussion(user, f"Buy ACME? {STEADY}", PANEL)
    before = first_completed(site, user, running)
    postgres = container(host, "postgres")
    # Docker would restart it at once (unless-stopped): the outage is held for a few turns' time, then ended.
    with watching_health(site) as watch:
        run(host, f"docker update --restart=no {postgres} && docker kill --signal KILL {postgres}")
        wait_for(lambda: 503 in watch.codes, 15, "/api/health answering 503")
        time.sleep(6)  # PostgreSQL stays down over more than one turn's end
        run(host, f"docker start {postgres} && docker update --restart=unless-stopped {postgres}")
        assert_healthy(site)
    done = finished(site, user, running, 60)
    assert done["status"] == "completed", done
    after = completed_messages(site, user, running)
    assert before.items() <= after.items(), (before, after)  # nothing completed lost or rewritten
    assert sorted(after) == list(range(TURNS))
    assert_stream_whole(site, user, running, "completed")
    print(f"health through the outage: {watch.codes}; messages before the kill {len(before)}, after {len(after)}")


def test_redis_restarted_mid_discussion_keeps_streams_slots_and_queue(faults: Faults, host: RemoteHost) -> None:
    site = faults.site
    user = site.new_user()
    earlier = site.create_discussion(user, "Buy ACME? [[fake:words=8]]", PANEL)
    assert finished(site, user, earlier, 60)["status"] == "completed"
    stream = assert_stream_whole(site, user, earlier, "completed")
    running = site.create_discussion(user, f"Hold ACME? {STEADY}", PANEL)
    before = first_completed(site, user, running)
    # A restart is a clean shutdown: Redis writes its append-only file out, then loads it again. The running turn's
    # next event append meets a broken connection and is retried on a new one (service/main.py).
    run(host, f"docker restart --time 10 {container(host, 'redis')}")
    assert_healthy(site)
    done = finished(site, user, running, 60)
    assert done["status"] == "completed", done
    after = completed_messages(site, user, running)
    assert before.items() <= after.items() and sorted(after) == list(range(TURNS)), (before, after)
    assert_stream_whole(site, user, running, "completed")  # across the restart, no event lost or doubled
    assert assert_stream_whole(site, user, earlier, "completed") == stream  # every event, as it was
    runs_a_discussion(site, user)
    # Every slot was given back; nothing waits in the queue.
    assert api_metric(host, "cvm_agents_running") == 0
    assert api_metric(host, "cvm_agent_turns_waiting") == 0


def test_api_killed_like_the_oom_killer_restarts_and_its_discussion_is_taken_over(
    faults: Faults, host: RemoteHost
) -> None:
    site = faults.site
    user = site.new_user()
    running = site.create_discussion(user, f"Sell ACME? {STEADY}", PANEL)
    before = first_completed(site, user, running)
    api = container(host, "api")
    restarts = int(run(host, f"docker inspect --format '{{{{.RestartCount}}}}' {api}"))
    # SIGKILL to the container's PID 1 (gunicorn's master) from the host, as the kernel's OOM killer sends it:
    # Docker sees exit 137, not a stop, so the restart policy applies.
    run(host, f"kill -KILL $(docker inspect --format '{{{{.State.Pid}}}}' {api})")
    wait_for(
        lambda: int(run(host, f"docker inspect --format '{{{{.RestartCount}}}}' {api}")) > restarts,
        30,
        "Docker restarting the killed API",
    )
    assert_healthy(site)
    done = finished(site, user, running, 60)  # the dead worker's lease expires, another worker resumes
    assert done["status"] == "completed", done
    after = completed_messages(site, user, running)
    assert before.items() <= after.items() and sorted(after) == list(range(TURNS)), (before, after)
    assert_stream_whole(site, user, running, "completed")


def test_llm_cut_off_fails_turns_cleanly_and_the_next_discussion_works(faults: Faults, host: RemoteHost) -> None:
    site = faults.site
    user = site.new_user()
    stub, network = container(host, "llm-stub"), f"{faults.name}_egress"
    # Each turn would stream for ~50 s: the first is mid-answer when the network goes.
    cut_off = site.create_discussion(user, "Short ACME? [[fake:delay=0.05,words=1000]]", PANEL)
    with site.websocket(user, cut_off) as ws:
        wait_for(lambda: next(events(ws, timeout=20))["type"] == "token" or None, 20, "the first turn's first words")
    cut = time.monotonic()
    run(host, f"docker network disconnect {network} {stub}")
    try:
        done = finished(site, user, cut_off, AGENT_TIMEOUT + 30)
    finally:
        run(host, f"docker network connect --alias llm-stub {network} {stub}")
    cut_seconds = time.monotonic() - cut
    assert done["status"] == "failed", done
    error = str(done["error"])
    assert error.startswith(f"every agent turn failed ({len(PANEL)} turns): ") and "\n" not in error, error
    messages = discussion(site, user, cut_off)["messages"]
    assert [m["status"] for m in messages] == ["failed"] * len(PANEL), messages
    assert messages[0]["error"] == f"turn exceeded AGENT_TIMEOUT={AGENT_TIMEOUT} s", messages[0]
    assert_stream_whole(site, user, cut_off, "failed")
    runs_a_discussion(site, user)
    print(f"LLM cut off for {cut_seconds:.1f} s; the discussion's error: {error}")


# Where a small filesystem stands for the data disk, a 16 MB tmpfs (in memory: the VM's own disk never fills): on
# the host, and in the API container (its root is read-only, so an existing folder).
DISK, API_DISK = "/mnt/faults-data", "/mnt"
ARTIFACTS = "/var/lib/cvm-service/artifacts"  # the artifacts volume as the API sees it (compose/api.yml.j2)
FULL = (
    "no space left on the appliance's disk for uploads: try again later; "
    "the operator must free space on it (docs/runbook.md#diskfull)"
)


def onto_a_full_disk(path: str, disk: str) -> str:
    """Shell: `path` moved onto a fresh 16 MB tmpfs at `disk` with its contents, owner and mode, then a filler takes
    every free byte of it; prints the bytes left (0)."""
    return (
        f"mkdir -p {disk} && mount -t tmpfs -o size=16m faults-data {disk} && cp -a {path}/. {disk}/"
        f" && chown --reference={path} {disk} && chmod --reference={path} {disk} && mount --bind {disk} {path}"
        f" && {{ dd if=/dev/zero of={disk}/filler bs=1M 2>/dev/null || true; }} && df --output=avail {disk} | tail -1"
    )


def firing(host: RemoteHost) -> set[str]:
    """The alerts Prometheus fires now (it listens on the host's 127.0.0.1 only)."""
    alerts = json.loads(run(host, "curl -s 127.0.0.1:9090/api/v1/alerts"))["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def upload(site: Site, user: dict[str, str], body: bytes) -> httpx.Response:
    with site.client() as client:
        return client.post("/api/files", headers=user, files={"file": ("notes.txt", body, "text/plain")})


def test_full_data_disk_refuses_uploads_with_507_fails_backups_in_one_line_and_alerts(
    faults: Faults, host: RemoteHost
) -> None:
    site = faults.site
    user = site.new_user()
    kept = upload(site, user, b"written before the disk filled\n")
    assert kept.status_code == 201, kept.text
    backups = f"{BASE}/shared/backups"
    pid = run(host, f"docker inspect --format '{{{{.State.Pid}}}}' {container(host, 'api')}")
    # The API's artifacts move onto a full disk inside its own mount namespace (it sees the mount at once, no
    # restart); the host's backups folder does the same in the host's.
    in_api = f"nsenter --target {pid} --mount -- sh -c"
    assert run(host, f"{in_api} {shlex.quote(onto_a_full_disk(ARTIFACTS, API_DISK))}") == "0"
    try:
        assert run(host, onto_a_full_disk(backups, DISK)) == "0"
        try:
            assert "StorageFull" not in firing(host)
            refused = upload(site, user, b"x" * 300_000)
            assert (refused.status_code, refused.json()["detail"]) == (507, FULL)
            # Reads keep working: the file from before, the user's discussions.
            with site.client() as client:
                listed = client.get("/api/files", headers=user).json()
                got = client.get(f"/api/files/{kept.json()['id']}", headers=user)
                assert client.get("/api/discussions", headers=user).status_code == 200
            assert [f["id"] for f in listed] == [kept.json()["id"]]
            assert (got.status_code, got.content) == (200, b"written before the disk filled\n")
            backup = host.run(f"{BASE}/bin/backup.sh --reason fault-drill")
            assert (backup.exit_code, str(backup.stderr).strip()) == (
                1,
                f"backup failed: No space left on device (in {backups}): free space on that disk "
                "(docs/runbook.md#diskfull)",
            ), backup.stdout
            wait_for(lambda: "StorageFull" in firing(host), 45, "StorageFull firing in Prometheus")
        finally:
            run(host, f"umount {backups} && umount {DISK}")
    finally:
        run(host, f"{in_api} {shlex.quote(f'umount {ARTIFACTS} && umount {API_DISK}')}")
    assert upload(site, user, b"after the space came back\n").status_code == 201
    assert_healthy(site)


def test_reboot_mid_deploy_serves_one_consistent_release(faults: Faults) -> None:
    command = [sys.executable, "-m", "invoke", "deploy", "--version", "v2", "--image", "cvm-appliance/api:v1"]
    with open_host(load_config(faults.config_file)) as host:
        before = run(host, f"readlink {BASE}/current")
        deploy = subprocess.Popen(
            [*command, "--config", str(faults.config_file)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        wait_for(lambda: host.run(f"test -d {BASE}/shared/deploy.lock").exit_code == 0, 120, "the deploy's lock")
    # A hard reset (the console's forced restart), at once: the sandbox's systemd ignores docker's SIGTERM, so a
    # graceful restart waits 30 s, in which a deploy that sends no image (this one) can finish and unlock.
    docker.from_env().containers.get(faults.sandbox.name).restart(timeout=0)
    _, stderr = deploy.communicate(timeout=300)
    assert deploy.returncode != 0, stderr  # its host went away under it
    assert serving_within(faults.site, 90), "no release served within 90 s of the reboot"
    with open_host(load_config(faults.config_file)) as after:
        current = run(after, f"readlink {BASE}/current")
        assert current == before  # the half-done deploy never became current
        version = current.rsplit("/", 1)[1]
        assert health(faults.site)[1]["version"] == version
        assert_stack_runs_release(after, version)


def test_the_lock_left_by_the_reboot_is_named_stale(faults: Faults, host: RemoteHost) -> None:
    assert host.run(f"test -d {BASE}/shared/deploy.lock").exit_code == 0, "the reboot test left no lock behind"
    try:
        again = inv("deploy", "--version", "v2", "--image", "cvm-appliance/api:v1", "--config", str(faults.config_file))
        print(f"deploy after the reboot: {again.stderr.strip()}")
        assert again.returncode == 4, again.stdout + again.stderr
        assert "it looks stale" in again.stderr, again.stderr
    finally:
        broken = inv("lock.break", "--config", str(faults.config_file))
        assert broken.returncode == 0, broken.stderr
        assert_healthy(faults.site)
