"""The SSH edge: open a Fabric connection with known-host checks, run commands, upload files.

Every transport failure becomes one `SshError` line that says what to fix. Command failures are
not exceptions here: `run` returns the exit status and the caller decides.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paramiko
from fabric import Connection

from appliance import tunnel
from appliance.config import Config, Host
from appliance.errors import ApplianceError, SshError
from appliance.shell import as_root, sh
from appliance.steps import Transfer

CONNECT_TIMEOUT = 10
# After Ctrl-C, how long a followed command's output may go on before the channel is closed under it.
INTERRUPT_GRACE_SECONDS = 5


@dataclass(frozen=True)
class CommandResult:
    stdout: str
    stderr: str
    exit_code: int


class _RememberNewHostKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use: a host never seen before is recorded; a changed key is refused by paramiko."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.known_hosts.open("a", encoding="utf-8") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class TextSink(Protocol):
    """Where a followed command's output goes: standard output, or a stream of one's own (appliance.log_lines)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def _interrupt(channel: paramiko.Channel) -> None:
    """Ctrl-C to a command on the host's pseudo-terminal, then its channel closed once its output has ended or
    INTERRUPT_GRACE_SECONDS have passed. Invoke alone would wait for the end of output, and a child of the command
    that outlives it (`docker logs` in the background) can hold the host's terminal open: the operator's Ctrl-C
    then never came back. Closing the channel hangs up the host's terminal, which ends what is left there. The send
    is bounded too (paramiko waits for the host's window without end otherwise): a host that takes no more input
    gets its channel closed at the deadline all the same."""
    channel.settimeout(INTERRUPT_GRACE_SECONDS)
    with contextlib.suppress(OSError, EOFError):  # a timeout is an OSError; such a channel is closed below
        channel.send(b"\x03")
    deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
    while not channel.eof_received and time.monotonic() < deadline:
        time.sleep(0.1)
    channel.close()


class _RedactingWriter:
    """A text stream that masks secret values before they reach the terminal."""

    def __init__(self, target: TextSink, redact: Callable[[str], str]) -> None:
        self.target, self.redact = target, redact

    def write(self, text: str) -> int:
        return self.target.write(self.redact(text))

    def flush(self) -> None:
        self.target.flush()


class RemoteHost:
    """An open SSH session to one host; commands run as root (sudo -n for other users)."""

    def __init__(self, host: Host, connection: Connection) -> None:
        self.host = host
        self.connection = connection

    def run(self, command: str, timeout: int | None = None) -> CommandResult:
        """Run `command` as root under `set -o pipefail`; transport failures raise SshError."""
        with self._connection_lost("running a command"):
            result = self._invoke(command, hide=True, timeout=timeout)
        return CommandResult(result.stdout, result.stderr, result.exited)

    def _invoke(self, command: str, **options: Any) -> Any:
        """Invoke's run of `command` as root, with no standard input, its exit status returned (never raised: the
        caller decides)."""
        return self.connection.run(as_root(command, self.host.user), warn=True, in_stream=False, **options)

    @contextlib.contextmanager
    def _connection_lost(self, doing: str) -> Iterator[None]:
        """A transport failure while `doing` something, as one SshError line."""
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(f"{self.host.target}: connection lost while {doing}: {exc}") from None

    def follow(self, command: str, redact: Callable[[str], str], target: TextSink | None = None) -> int:
        """Run `command`, printing its output as it comes (redacted) to `target` (standard output); its exit
        status. It runs on a pseudo-terminal, so that Ctrl-C reaches it as the terminal's interrupt (without one
        it would wait forever for a command that never ends: `inv logs --follow`); see `_interrupt`."""
        out = _RedactingWriter(target or sys.stdout, redact)
        with self._connection_lost("running a command"):
            running = self._invoke(command, out_stream=out, err_stream=out, pty=True, asynchronous=True)
            try:
                while not running.runner.process_is_finished:
                    time.sleep(0.1)
            except KeyboardInterrupt:
                _interrupt(running.runner.channel)
                raise
            result = running.join()
        return int(result.exited)

    def upload(self, path: str, content: bytes, mode: int, owner: str, group: str) -> CommandResult:
        """Write `content` to `path` atomically: a private temp file, then `install` into place."""
        staging = f"/tmp/.appliance-upload-{secrets.token_hex(8)}"  # noqa: S108 - private name, 0600
        try:
            # A channel of its own, closed at once: sshd's MaxSessions counts every open one.
            with self.connection.client.open_sftp() as sftp, sftp.open(staging, "wb") as handle:
                handle.chmod(0o600)
                handle.write(content)
        except (paramiko.SSHException, OSError) as exc:
            raise SshError(f"{self.host.target}: upload of {path} failed: {exc}") from None
        install = sh("install", "-D", "-m", f"{mode:o}", "-o", owner, "-g", group, "-T", staging, path)
        return self.run(f"{install}; status=$?; rm -f {sh(staging)}; exit $status")

    def stream(self, command: str, chunks: Iterable[bytes], progress: Callable[[int], None]) -> CommandResult:
        """Run `command` as root on its own channel, feeding it `chunks` as standard input."""
        with self._connection_lost(f"streaming to {command!r}"):
            transport = self.connection.client.get_transport()
            assert transport is not None, "connected"
            channel = transport.open_session()
            channel.exec_command(as_root(command, self.host.user))
            sent = 0
            for chunk in chunks:
                channel.sendall(chunk)
                sent += len(chunk)
                progress(sent)
            channel.shutdown_write()
            stdout = channel.makefile("rb").read().decode(errors="replace")
            stderr = channel.makefile_stderr("rb").read().decode(errors="replace")
            status = channel.recv_exit_status()
        return CommandResult(stdout, stderr, status)

    def forward(self, port: int, transfer: Transfer) -> CommandResult:
        """Run `transfer` with a local port that leads to the host's 127.0.0.1:`port` over this connection."""
        self.connection.open()
        transport = self.connection.client.get_transport()
        assert transport is not None, "connected"
        try:
            with tunnel.forward(transport, port) as end:
                transfer.send(end)
        except ApplianceError as exc:
            return CommandResult("", str(exc), 1)
        return CommandResult("", "", 0)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> RemoteHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(host: Host, key_file: Path | None, known_hosts: Path, timeout: int = CONNECT_TIMEOUT) -> RemoteHost:
    """An open, checked session: reachable, key accepted, host key known, root or passwordless sudo."""
    connect_kwargs: dict[str, Any] = {
        "banner_timeout": timeout,
        "auth_timeout": timeout,
        "channel_timeout": timeout,
    }
    if key_file is not None:
        if not key_file.is_file():
            raise SshError(f"{host.target}: SSH key {key_file} does not exist: fix hosts.key")
        connect_kwargs.update(key_filename=str(key_file), look_for_keys=False, allow_agent=False)
    connection = Connection(
        host.address, user=host.user, port=host.port, connect_timeout=timeout, connect_kwargs=connect_kwargs
    )
    if known_hosts.exists():
        connection.client.load_host_keys(str(known_hosts))
    connection.client.set_missing_host_key_policy(_RememberNewHostKey(known_hosts))
    started = time.monotonic()
    try:
        connection.open()
    except Exception as exc:
        connection.close()
        raise SshError(describe_connect_failure(host, known_hosts, exc, time.monotonic() - started)) from None
    remote = RemoteHost(host, connection)
    if host.user != "root":
        probe = remote.run("true")
        if probe.exit_code != 0:
            remote.close()
            raise SshError(
                f"{host.target}: user {host.user} needs passwordless sudo "
                f"(sudo said: {probe.stderr.strip() or 'nothing'}): add a NOPASSWD rule or use root"
            )
    return remote


def open_host(config: Config) -> RemoteHost:
    """An SSH session to the config's (first) host, with its key and known_hosts resolved."""
    host = config.settings.hosts[0]
    key = config.resolve(host.key) if host.key else None
    return connect(host, key, config.resolve(host.known_hosts))


def describe_connect_failure(host: Host, known_hosts: Path, exc: BaseException, elapsed: float = 0.0) -> str:
    """One line for an SSH connection failure, saying what the operator should check."""
    where = host.target
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"{where}: host key mismatch ({exc.key.get_name()}): the host was rebuilt or this is not it; "
            f"if expected, remove its line from {known_hosts}"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return f"{where}: SSH key refused for user {host.user}: check hosts.key and the host's authorized_keys"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return f"{where}: connection refused: is sshd running and port {host.port} open in the security group?"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"{where}: no answer within {CONNECT_TIMEOUT}s: check the address, port and security group"
    if isinstance(exc, socket.gaierror):
        return f"{where}: cannot resolve {host.address}: check hosts.address"
    if isinstance(exc, paramiko.SSHException) and elapsed >= CONNECT_TIMEOUT - 1:
        # Paramiko words a silent peer as a banner error or as "No existing session", by timing.
        silence = f"no SSH server answered within {CONNECT_TIMEOUT}s"
        return f"{where}: port {host.port} took the connection but {silence}"
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
        return f"{where}: port {host.port} closed the connection before SSH greeted: is sshd (re)starting?"
    return f"{where}: SSH connection failed: {type(exc).__name__}: {exc}"


def host_key_line(address: str, port: int, public_key: str) -> str:
    """A known_hosts line for a host key (`ssh-ed25519 AAAA…`) at address:port."""
    name = address if port == 22 else f"[{address}]:{port}"
    return f"{name} {public_key.strip()}\n"


# paramiko logs every failed connect from its transport thread; the SshError line says it all.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
