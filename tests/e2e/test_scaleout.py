"""Several app hosts behind a load balancer (#19's acceptance), on one shared rig (tests/e2e/scaleout.py): two sandbox
CVMs, TLS-only PostgreSQL and Redis standing in for TencentDB, haproxy standing in for the CLB.

The tests run in this order on the one rig (pytest-xdist keeps a module on one worker, tests/conftest.py): what only
reads it first, then the abrupt stop of b (started again at its end), the host stopped for good (a) last. The two that
stop a host first check that both serve: what an earlier failure left is then said, not guessed at."""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio

from service.agents.slots import AgentSlots
from tests.conftest import SandboxFactory, inv
from tests.e2e.scaleout import CHECK_INTERVAL_MS, CHECK_TIMEOUT_MS, FALL, POLL_SECONDS, ScaleOut, scale_out
from tests.e2e.traffic import Followed, Site, follow_discussion, steady_load
from tests.service.tls_servers import PASSWORD, PG_BIN

# The rig's set-up (two hosts bootstrapped and deployed) counts towards its first test's time.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

# The service's defaults, as the rig's api.env leaves them: the agent cap and the Redis key prefix.
AGENT_CAP, REDIS_PREFIX = 10, "cvm:"
AFTER_DOWN = 10  # seconds of load through haproxy that the abrupt stop runs on after haproxy marked the host DOWN


@pytest.fixture(scope="module")
def rig(module_sandbox_factory: SandboxFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    with scale_out(module_sandbox_factory, tmp_path_factory.mktemp("scaleout")) as made:
        print(f"scale-out rig set up in {made.timings}")
        yield made


def health(site: Site) -> tuple[int, dict[str, Any]]:
    with site.client() as client:
        answer = client.get("/api/health")
    return answer.status_code, dict(answer.json())


def serving(rig: ScaleOut) -> dict[str, str]:
    """Each host's release, from its own /api/health."""
    return {name: str(health(site)[1].get("version")) for name, site in rig.direct.items()}


def finished(site: Site, user: dict[str, str], discussion: str, seconds: float) -> dict[str, Any]:
    """The discussion once it is neither queued nor running (read through `site`, so from PostgreSQL)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with site.client() as client:
                found = client.get(f"/api/discussions/{discussion}", headers=user)
            if found.status_code == 200 and found.json()["status"] not in ("queued", "running", "stopping"):
                return dict(found.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"discussion {discussion} not finished within {seconds}s")


def status(site: Site, user: dict[str, str], discussion: str) -> str:
    with site.client() as client:
        return str(client.get(f"/api/discussions/{discussion}", headers=user).json()["status"])


def both_serving(rig: ScaleOut, seconds: float = 180) -> None:
    """Both hosts UP in haproxy and serving v1: what the tests that stop a host start from (and the abrupt stop's
    restart of b ends with)."""
    for name in rig.boxes:
        rig.lb.wait_for(name, "UP", seconds)
    assert serving(rig) == {"a": "v1", "b": "v1"}


def assert_whole(discussion: str, events: list[dict[str, Any]]) -> None:
    """A discussion's events from the first: every seq once and in order, each of its 3 turns' messages completed
    once, and its end `completed`."""
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1)), (discussion, events[-3:])
    completed = [e["message"]["turn_index"] for e in events if e["type"] == "message_completed"]
    assert sorted(completed) == sorted(set(completed)) and len(completed) == 3, (discussion, completed)
    assert events[-1]["status"] == "completed", (discussion, events[-1])


def lease_seconds(rig: ScaleOut) -> float:
    """The discussion lease the hosts' API runs with (service/settings.py), as host a's API reads its settings."""
    script = "from service.settings import load_settings; print(load_settings().discussion_lease_seconds)"
    with rig.host("a") as host:
        api = host.run("docker ps -q --filter label=com.docker.compose.service=api").stdout.split()[0]
        read = host.run(f"docker exec {api} python3 -c {shlex.quote(script)}")
    assert read.exit_code == 0, read.stdout + read.stderr
    return float(read.stdout)


def hostnames(rig: ScaleOut, box: str) -> set[str]:
    """The host's containers' hostnames (Docker's: the id's first 12 digits), which start its workers' ids."""
    with rig.host(box) as host:
        return {line[:12] for line in host.run("docker ps -q --no-trunc").stdout.split()}


def psql(rig: ScaleOut, tls: str, query: str) -> subprocess.CompletedProcess[str]:
    """`query` in the managed PostgreSQL as its superuser, over a connection with libpq's `tls` settings; rows as
    lines of space-separated fields."""
    dsn = f"host={rig.gateway} port={rig.data.pg_port} user=postgres dbname=postgres sslrootcert={rig.data.ca_file}"
    return subprocess.run(
        [str(PG_BIN / "psql"), f"{dsn} {tls}", "-AtF", " ", "-c", query],
        capture_output=True, text=True, env={"PGPASSWORD": PASSWORD}, timeout=30,
    )  # fmt: skip


def lease_hosts(rig: ScaleOut, discussions: list[str]) -> dict[str, str]:
    """Each discussion's lease owner's hostname (a worker id is HOSTNAME:PID:NONCE; none once it finished), read from
    the managed PostgreSQL as the workers read it."""
    read = psql(rig, "sslmode=verify-full", "SELECT id, coalesce(lease_owner, '') FROM discussions")  # a few rows
    assert read.returncode == 0, read.stderr
    rows = dict(line.partition(" ")[::2] for line in read.stdout.splitlines())
    return {discussion: rows[discussion].split(":")[0] for discussion in discussions}


def test_both_hosts_bootstrap_in_one_command(rig: ScaleOut) -> None:
    for name in rig.boxes:
        with rig.host(name) as host:
            assert host.run(f"test -s {rig.config.settings.paths.host_record}").exit_code == 0, name
    for name in rig.boxes:
        assert rig.name_of(name).split("@", 1)[1] in rig.bootstrap_run.stdout, rig.bootstrap_run.stdout[-2000:]
    assert serving(rig) == {"a": "v1", "b": "v1"}
    assert rig.lb.states() == {"a": "UP", "b": "UP"}
    print(f"set-up seconds: {rig.timings}")


def test_one_prometheus_on_the_first_host_scrapes_the_second_over_the_vpc(rig: ScaleOut) -> None:
    """Host a's Prometheus reads b's API and node exporter through b's nginx at b's bridge address (its "VPC"
    address), with the password; b runs no Prometheus of its own."""
    second = next(host for host in rig.config.configured_hosts if host.port == rig.boxes["b"].ssh_port)
    query = "curl -fsS --get --data-urlencode 'query=up' http://127.0.0.1:9090/api/v1/query"
    deadline, seen = time.monotonic() + 90, {}
    with rig.host("a") as host:
        while time.monotonic() < deadline:
            answer = json.loads(host.run(query).stdout or "{}")
            results = answer.get("data", {}).get("result", [])
            seen = {(r["metric"].get("host"), r["metric"]["job"]): r["value"][1] for r in results}
            if seen.get((second.label, "api")) == "1" and seen.get((second.label, "node")) == "1":
                break
            time.sleep(2)
    assert (seen.get((second.label, "api")), seen.get((second.label, "node"))) == ("1", "1"), seen
    with rig.host("b") as host:
        names = host.run("docker ps --format '{{.Names}}'").stdout.split()
    assert not [name for name in names if "prometheus" in name or "alertmanager" in name], names
    assert [name for name in names if "node-exporter" in name], names


def test_the_data_services_refuse_plaintext_and_each_host_verifies_their_tls(rig: ScaleOut) -> None:
    plain = psql(rig, "sslmode=disable", "SELECT 1")
    assert plain.returncode != 0 and "no encryption" in plain.stderr, plain.stderr
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=rig.gateway, port=rig.data.redis_port, password=PASSWORD, socket_timeout=3).ping()
    for name, site in rig.direct.items():
        status, body = health(site)
        assert status == 200, (name, body)
        assert body["database"]["target"] == f"{rig.gateway}:{rig.data.pg_port}/postgres", body
        assert (body["database"]["tls_verified"], body["redis"]["tls_verified"]) == (True, True), (name, body)


def test_a_canary_with_the_wrong_ca_fails_its_health_in_one_line_and_the_other_host_keeps_v1(rig: ScaleOut) -> None:
    """Redis's CA swapped for one that did not sign it (the database's stays right, so migrations pass): the canary's
    API answers 503 naming the TLS failure, the deploy stops at its health gate in one line, and the second host is
    never touched."""
    good = f'ca_file = "{rig.data.ca_file}"\n'
    text = rig.config_file.read_text(encoding="utf-8")
    assert text.count(good) == 2  # the database's, then Redis's
    before, _, after = text.rpartition(good)
    wrong = rig.config_file.with_name("wrong-ca.toml")
    wrong.write_text(f'{before}ca_file = "{rig.data.wrong_ca_file}"\n{after}', encoding="utf-8")
    impatient = wrong.read_text(encoding="utf-8").replace("[service]\n", "[service]\nhealth_timeout = 15\n", 1)
    wrong.write_text(impatient, encoding="utf-8")
    with steady_load(rig.site, ["/api/health", "/api/roles"], per_second=20) as load:
        run = inv("deploy", "--version", "wrongca", "--image", "cvm-appliance/api:v1", "--config", str(wrong))
    assert run.returncode != 0, run.stdout
    print(run.stdout[-3000:], run.stderr)
    assert "health gate" in run.stderr and "certificate verify failed" in run.stderr, run.stderr
    assert f"not started: {rig.name_of('b').split('@', 1)[1]}" in run.stderr, run.stderr
    assert serving(rig) == {"a": "v1", "b": "v1"}
    with rig.host("b") as host:
        assert host.run(f"test -e {rig.config.settings.paths.release('wrongca')}").exit_code != 0
    assert load.failed == 0, (load.outcomes, load.errors[:5])


def holders_key() -> str:
    """The service's own name for the cap's Redis set (agents/slots.py)."""
    return AgentSlots(redis.asyncio.Redis(), REDIS_PREFIX, AGENT_CAP).holders_key


def test_the_agent_cap_holds_across_both_hosts(rig: ScaleOut) -> None:
    """12 single-agent discussions, half started on each host: at most 10 turns hold a slot at once, and 10 do."""
    client = redis.Redis(
        host=rig.gateway, port=rig.data.redis_port, password=PASSWORD, ssl=True,
        ssl_ca_certs=str(rig.data.ca_file), socket_timeout=3,
    )  # fmt: skip
    key, samples, stop = holders_key(), Counter[int](), threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples[int(client.zcount(key, int(time.time() * 1000), "+inf"))] += 1
            time.sleep(0.05)

    user = rig.site.new_user()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        sites = [rig.direct["ab"[i % 2]] for i in range(12)]  # half started on each host
        started = [
            (site, site.create_discussion(user, f"Cap {i} [[fake:delay=0.05,words=80]]", ["bull"]))
            for i, site in enumerate(sites)
        ]
        outcomes = [finished(site, user, discussion, 240)["status"] for site, discussion in started]
    finally:
        stop.set()
        sampler.join()
    assert outcomes == ["completed"] * 12, outcomes
    assert max(samples) == AGENT_CAP, sorted(samples.items())
    print(f"running samples (count: times seen): {sorted(samples.items())}")


def test_rolling_deploy_and_rollback_under_load_through_the_balancer(rig: ScaleOut) -> None:
    """v2 onto both hosts, canary first, then back to v1, at 50 requests/s through haproxy: nothing fails, and a
    follower of a discussion keeps every event across the hosts' switches."""
    user = rig.site.new_user()
    discussion = rig.site.create_discussion(user, "Hold ACME? [[fake:delay=0.05,words=5000]]", ["bull", "bear"])
    with steady_load(rig.site, ["/api/health", "/api/roles"], per_second=50) as load, ThreadPoolExecutor(1) as pool:
        stream = Followed()
        followed = pool.submit(follow_discussion, rig.site, user, discussion, followed=stream)
        time.sleep(2)
        run = inv("deploy", "--version", "v2", "--image", "cvm-appliance/api:v1", "--config", str(rig.config_file))
        assert run.returncode == 0, run.stdout + run.stderr
        assert serving(rig) == {"a": "v2", "b": "v2"}
        back = inv("rollback", "--config", str(rig.config_file))
        assert back.returncode == 0, back.stdout + back.stderr
        assert serving(rig) == {"a": "v1", "b": "v1"}
        rig.site.stop_discussion(user, discussion)
        followed.result(timeout=120)
    assert load.total > 50 * 10, load.outcomes
    assert load.failed == 0, (load.outcomes, load.errors[:5], load.failures[:20])
    assert [event["seq"] for event in stream.events] == list(range(1, len(stream.events) + 1)), str(stream)
    assert stream.events[-1]["status"] == "stopped"
    print(f"roll: load {dict(load.outcomes)}; follower {stream}\n{run.stdout[-2500:]}\n{back.stdout[-1500:]}")


def test_an_abrupt_stop_fails_requests_only_until_haproxy_sees_it_and_the_other_host_takes_its_discussions(
    rig: ScaleOut,
) -> None:
    """Discussions started on host b, steady load through haproxy, then b's sandbox is killed (`docker kill`: a power
    cut, no drain, no shutdown). Requests fail only from the kill until haproxy marks b DOWN (interval x fall), none
    after; once b's leases expire, a's reaper takes each discussion over and completes it with each turn's message
    once. Expects both hosts UP and serving v1 (checked first); whatever happens, b is started again, and its systemd
    brings its Docker and the stack back: it serves v1 again, UP in haproxy, for the drain test after."""
    both_serving(rig)
    lease, on_a, on_b = lease_seconds(rig), hostnames(rig, "a"), hostnames(rig, "b")
    user = rig.site.new_user()
    discussions = [
        rig.direct["b"].create_discussion(user, f"Cut {i} [[fake:delay=0.05,words=200]]", ["bull", "bear"])
        for i in range(3)
    ]
    box = rig.boxes["b"].name
    try:
        with steady_load(rig.site, ["/api/roles", "/"], per_second=30) as load:
            time.sleep(2)
            assert set(lease_hosts(rig, discussions).values()) <= on_b, (lease_hosts(rig, discussions), on_b)
            killed = time.monotonic()
            subprocess.run(["docker", "kill", box], check=True, capture_output=True, timeout=60)
            rig.lb.wait_for("b", "DOWN")
            down = time.monotonic()
            taken: dict[str, float] = {}  # seconds from the kill until a worker on a held the discussion's lease
            # The load goes on through the take-over, and for AFTER_DOWN seconds at least: failures after DOWN show.
            while time.monotonic() - killed < 3 * lease and (
                len(taken) < len(discussions) or time.monotonic() < down + AFTER_DOWN
            ):
                for discussion, owner in lease_hosts(rig, discussions).items():
                    if owner in on_a:
                        taken.setdefault(discussion, time.monotonic() - killed)
                time.sleep(POLL_SECONDS)
        detected = down - killed
        # haproxy checks every interval; each check fails at once (the port refuses) or within its timeout.
        assert detected <= FALL * (CHECK_INTERVAL_MS + CHECK_TIMEOUT_MS) / 1000 + 1, detected
        window = [(path, outcome, sent - killed, ended - killed) for path, outcome, sent, ended in load.failures]
        # Failed: only requests answered after the kill, and none sent after haproxy saw b DOWN (its state read every
        # POLL_SECONDS) while the load went on through the take-over.
        assert all(ended >= 0 and sent <= detected + POLL_SECONDS + 0.5 for _, _, sent, ended in window), window
        # The owner renews every lease/3, so its lease runs out at most `lease` after the kill; a's reapers pass every
        # lease/2 (service/agents/orchestration.py): every discussion taken over within 1.5 x the lease.
        assert sorted(taken) == sorted(discussions), (taken, lease_hosts(rig, discussions))
        assert max(taken.values()) <= 1.5 * lease + 2, (taken, lease)
        ends = [finished(rig.direct["a"], user, discussion, 180)["status"] for discussion in discussions]
        assert ends == ["completed"] * 3, ends
        for discussion in discussions:
            assert_whole(discussion, rig.site.read_to_end(user, discussion, timeout=30))  # from a, the only one UP
    finally:
        subprocess.run(["docker", "start", box], capture_output=True, timeout=120)
    both_serving(rig)
    when = [f"{path} {outcome} {sent:.2f}-{ended:.2f}" for path, outcome, sent, ended in window]
    print(
        f"abrupt stop: haproxy saw b DOWN {detected:.1f}s after the kill; {load.failed} of {load.total} requests"
        f" failed ({dict(load.outcomes)}; each path, outcome, sent-ended s after the kill: {when});"
        f" taken over after {sorted(round(t, 1) for t in taken.values())}s (lease {lease:.0f}s)"
    )


def test_drain_then_stop_a_host_drops_nothing_and_its_discussions_finish_on_the_other(rig: ScaleOut) -> None:
    """Discussions started on host a; a drained, haproxy stops sending it requests, then a is powered off: every
    request through haproxy answers, and each discussion completes on b with each turn's message exactly once.
    Expects both hosts UP and serving v1 (checked first); leaves a off for good."""
    both_serving(rig)
    user = rig.site.new_user()
    discussions = [
        rig.direct["a"].create_discussion(user, f"Drain {i} [[fake:delay=0.05,words=400]]", ["bull", "bear"])
        for i in range(3)
    ]
    streams = [Followed() for _ in discussions]
    with steady_load(rig.site, ["/api/roles", "/"], per_second=30) as load, ThreadPoolExecutor(3) as pool:
        followers = [
            pool.submit(follow_discussion, rig.site, user, discussion, 300, stream)
            for discussion, stream in zip(discussions, streams, strict=True)
        ]
        time.sleep(2)
        drained = inv("host.drain", rig.name_of("a"), "--config", str(rig.config_file))
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert health(rig.direct["a"]) == (503, {"status": "draining"})
        detected = rig.lb.wait_for("a", "DOWN")
        again = inv("host.drain", rig.name_of("a"), "--config", str(rig.config_file))
        assert again.returncode == 0 and "1 ok, 0 changed" in again.stdout, again.stdout
        # Still running on a when it goes: what finishes them must be b.
        assert [status(rig.direct["b"], user, discussion) for discussion in discussions] == ["running"] * 3
        box = rig.boxes["a"].name
        subprocess.run(["docker", "exec", box, "systemctl", "poweroff"], capture_output=True, timeout=60)
        subprocess.run(["docker", "wait", box], capture_output=True, timeout=180)
        ends = [follower.result(timeout=300) for follower in followers]
    assert load.failed == 0, (load.outcomes, load.errors[:5])
    for discussion, stream in zip(discussions, ends, strict=True):
        assert_whole(discussion, stream.events)
    assert [status(rig.direct["b"], user, discussion) for discussion in discussions] == ["completed"] * 3
    followed = "; ".join(str(stream) for stream in ends)
    print(f"drain: haproxy saw a DOWN {detected:.1f}s after the drain; load {dict(load.outcomes)}; {followed}")
