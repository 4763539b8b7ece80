"""The executor's bookkeeping, against a local stand-in host that really runs bash and writes files."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.executor import Executor, failure_reason
from appliance.report import summary_table
from appliance.steps import Action, Directory, Facts, Forward, ManagedFile, Step, Stream, Transfer, TunnelEnd

pytestmark = pytest.mark.unit


@dataclass
class Outcome:
    stdout: str
    stderr: str
    exit_code: int


class LocalHost:
    """Runs the executor's commands with local bash; the SSH edge is covered by the e2e tests."""

    def run(self, command: str, timeout: int | None = None) -> Outcome:
        done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True)
        return Outcome(done.stdout, done.stderr, done.returncode)

    def stream(self, command: str, chunks: Iterable[bytes], progress: Callable[[int], None]) -> Outcome:
        payload = b"".join(chunks)
        progress(len(payload))
        done = subprocess.run(["bash", "-c", command], input=payload, capture_output=True)
        return Outcome(done.stdout.decode(), done.stderr.decode(), done.returncode)

    def upload(self, path: str, content: bytes, mode: int, owner: str, group: str) -> Outcome:
        Path(path).write_bytes(content)
        Path(path).chmod(mode)
        return Outcome("", "", 0)

    def forward(self, port: int, transfer: Transfer) -> Outcome:
        """No SSH here: the transfer reaches the local port itself (the tunnel is e2e's)."""
        try:
            transfer.send(Direct(port))
        except ApplianceError as exc:
            return Outcome("", str(exc), 1)
        return Outcome("", "", 0)


@dataclass
class Direct:
    port: int
    sent: int = 0
    broken: bool = False


def test_changed_then_ok_and_check_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "app.conf"
    steps: list[Step] = [Directory(str(tmp_path / "etc"), 0o750), ManagedFile(str(target), b"a=1\n", 0o600)]

    planned = Executor(LocalHost(), check=True).apply_all(steps)
    assert [result.status for result in planned] == ["pending", "pending"]
    assert not target.exists() and not (tmp_path / "etc").exists()

    assert [result.status for result in Executor(LocalHost()).apply_all(steps)] == ["changed", "changed"]
    assert target.read_bytes() == b"a=1\n"
    assert [result.status for result in Executor(LocalHost()).apply_all(steps)] == ["ok", "ok"]
    assert [result.status for result in Executor(LocalHost(), check=True).apply_all(steps)] == ["ok", "ok"]


def test_first_failure_stops_the_run_and_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    later = tmp_path / "later.conf"
    results = Executor(LocalHost()).apply_all([Directory(str(blocker)), ManagedFile(str(later), b"x")])
    assert [result.status for result in results] == ["failed"]
    assert "is a regular file, not a directory" in results[0].error
    assert not later.exists()
    table = summary_table(results, "local")
    assert "0 ok, 0 changed, 0 pending, 1 failed" in table


def test_failed_command_error_is_redacted(tmp_path: Path) -> None:
    step = Directory("/proc/secret-sk-123456/x")  # install -d fails under /proc
    results = Executor(LocalHost(), redact=lambda text: text.replace("sk-123456", "******")).apply_all([step])
    assert results[0].status == "failed"
    assert "sk-123456" not in results[0].error and "******" in results[0].error


def test_a_failure_reads_as_its_last_line_not_a_status_echoed_after_it() -> None:
    """Compose v1's `run` logs the one-off container's exit status after the container's output
    (tests/appliance/test_one_off_reason.py runs the real one)."""
    why = "the database refused the password: set DATABASE_PASSWORD"
    assert failure_reason("", f"Creating agents-api-v2_api_run ... done\n{why}\n3\n", 3) == why
    assert failure_reason("applied migrations: []\n", "", 1) == "applied migrations: []"
    assert failure_reason("", "3\n", 3) == "3"  # nothing else said: the status is all there is
    assert failure_reason("", "", 4) == "exit 4"
    assert failure_reason("", "unknown flag: --x\n2\n", 1) == "2"  # a line that is not the status is kept


@dataclass(frozen=True)
class Pieces:
    parts: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return sum(map(len, self.parts))

    def chunks(self) -> Iterator[bytes]:
        yield from self.parts


@dataclass(frozen=True)
class StreamInto:
    """A step that streams bytes into a file when it is missing."""

    path: str

    @property
    def name(self) -> str:
        return f"stream into {self.path}"

    def probes(self) -> dict[str, str]:
        return {"exists": f"test -e {self.path}"}

    def plan(self, facts: Facts) -> list[Action]:
        return [] if facts["exists"].ok else [Stream(f"cat > {self.path}", Pieces((b"abc", b"def")), "copy")]


def test_stream_feeds_the_command_and_reports_progress(tmp_path: Path) -> None:
    target = tmp_path / "streamed"
    seen: list[tuple[str, int, int]] = []
    executor = Executor(LocalHost(), progress=lambda why, done, total: seen.append((why, done, total)))
    assert executor.apply(StreamInto(str(target))).status == "changed"
    assert target.read_bytes() == b"abcdef"
    assert seen == [("copy", 6, 6)]
    assert Executor(LocalHost()).apply(StreamInto(str(target))).status == "ok"


@dataclass(eq=False)
class Delivery:
    """A transfer that writes `payload` to the forwarded port, or fails when `refuse` is set."""

    payload: bytes
    refuse: str = ""
    sent: int | None = None

    def send(self, tunnel: TunnelEnd) -> None:
        if self.refuse:
            raise ApplianceError(self.refuse)
        with socket.create_connection(("127.0.0.1", tunnel.port)) as connection:
            connection.sendall(self.payload)
        self.sent = len(self.payload)

    def summary(self) -> str:
        return "deliver" if self.sent is None else f"deliver ({self.sent} bytes sent)"


@dataclass(frozen=True)
class Deliver:
    port: int
    transfer: Delivery
    name: str = "deliver"

    def probes(self) -> dict[str, str]:
        return {}

    def plan(self, facts: Facts) -> list[Action]:
        return [Forward(self.port, self.transfer)]


def test_a_forward_says_what_travelled_once_it_ran() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert Executor(LocalHost(), check=True).apply(Deliver(port, Delivery(b"x" * 10))).actions == ["deliver"]
        result = Executor(LocalHost()).apply(Deliver(port, Delivery(b"x" * 10)))
        received, _ = server.accept()
        with received:
            assert received.recv(100) == b"x" * 10
    assert (result.status, result.actions) == ("changed", ["deliver (10 bytes sent)"])
    refused = Executor(LocalHost()).apply(Deliver(port, Delivery(b"", refuse="registry refused the blob")))
    assert (refused.status, refused.error) == ("failed", "deliver: registry refused the blob")
