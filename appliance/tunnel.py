"""A local TCP port that leads to the host's loopback over the SSH connection (`direct-tcpip` channels).

Each connection accepted on 127.0.0.1:<free port> becomes one channel to the host's 127.0.0.1:PORT; the bytes
sent towards the host are counted, so a transfer can say what travelled. sshd must allow it: bootstrap's
drop-in permits local forwarding to that one address (`PermitOpen`) and nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import paramiko

BUFFER = 1 << 16


class Tunnel:
    """The operator's end: `port` to connect to, `sent` bytes so far, `broken` once the SSH transport is gone."""

    def __init__(self, transport: paramiko.Transport, remote_port: int) -> None:
        self.transport = transport
        self.remote_port = remote_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # accept() wakes to see `closed`: a closed socket does not wake it
        self.closed = False
        self.port: int = self.listener.getsockname()[1]
        self.sent = 0
        self.broken = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def serve(self) -> None:
        while not self.closed:
            try:
                client, peer = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            threading.Thread(target=self._connect, args=(client, peer), daemon=True).start()

    def _connect(self, client: socket.socket, peer: tuple[str, int]) -> None:
        try:
            channel = self.transport.open_channel("direct-tcpip", ("127.0.0.1", self.remote_port), peer, timeout=10)
        except (paramiko.SSHException, OSError, EOFError):
            self.broken = not self.transport.is_active()
            client.close()
            return
        with self._lock:
            self._open.add(client)
        upstream = threading.Thread(target=self._pump_up, args=(client, channel), daemon=True)
        upstream.start()
        try:
            while data := channel.recv(BUFFER):
                client.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            client.close()
            upstream.join(timeout=5)
            with self._lock:
                self._open.discard(client)
            self.broken = self.broken or not self.transport.is_active()

    def _pump_up(self, client: socket.socket, channel: paramiko.Channel) -> None:
        try:
            while data := client.recv(BUFFER):
                channel.sendall(data)
                with self._lock:
                    self.sent += len(data)
        except (OSError, paramiko.SSHException, EOFError):
            self.broken = self.broken or not self.transport.is_active()
        finally:
            with contextlib.suppress(OSError, EOFError):
                channel.shutdown_write()

    def close(self) -> None:
        self.closed = True
        with self._lock:
            for client in self._open:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def forward(transport: paramiko.Transport, remote_port: int) -> Iterator[Tunnel]:
    """A tunnel to the host's 127.0.0.1:`remote_port` while the block runs."""
    tunnel = Tunnel(transport, remote_port)
    server = threading.Thread(target=tunnel.serve, daemon=True)
    server.start()
    try:
        yield tunnel
    finally:
        tunnel.close()
        server.join(timeout=5)
        tunnel.listener.close()
