"""The layer push against a real registry: a blob damaged on the way is refused, sent again, and what the
registry has is never pushed twice. Debian's docker-registry on loopback, this machine's Docker engine pushing
through a proxy that flips one byte of the first upload (the SSH tunnel's stand-in: same port, same counts)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
import yaml

from appliance.errors import ApplianceError
from appliance.images import LocalImage, local_image
from appliance.progress import TransferProgress
from appliance.transport.layers import Push
from tests.conftest import free_port

pytestmark = pytest.mark.integration
TAMPER_AT = 1_000_000  # bytes into a connection's upload: inside the blob, past any HTTP headers


@dataclass
class TamperingProxy:
    """Forwards 127.0.0.1:port to the registry, counting bytes sent; flips one byte of the first big upload."""

    target: int
    port: int = 0
    sent: int = 0
    broken: bool = False
    tampered: bool = False
    refusals: list[bytes] = field(default_factory=list)

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        seen = 0
        with client, upstream:
            while data := _recv(client):
                if not self.tampered and seen <= TAMPER_AT < seen + len(data):
                    flipped = bytearray(data)
                    flipped[TAMPER_AT - seen] ^= 0xFF
                    data, self.tampered = bytes(flipped), True
                seen += len(data)
                self.sent += len(data)
                upstream.sendall(data)

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        while data := _recv(upstream):
            if b"DIGEST_INVALID" in data:
                self.refusals.append(data)
            try:
                client.sendall(data)
            except OSError:
                return


def _recv(connection: socket.socket) -> bytes:
    try:
        return connection.recv(1 << 16)
    except OSError:
        return b""


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, storage = free_port(), tmp_path / "storage"
    settings = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    (tmp_path / "config.yml").write_text(yaml.safe_dump(settings))
    server = subprocess.Popen(
        ["docker-registry", "serve", str(tmp_path / "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.monotonic() < deadline and server.poll() is None, "docker-registry did not start"
        time.sleep(0.1)
    yield port, storage
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture()
def image() -> Iterator[tuple[docker.DockerClient, LocalImage]]:
    """A one-layer image of 3 MB of random bytes (compression cannot shrink it), made here without a registry."""
    payload = os.urandom(3_000_000)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("blob.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    ref = f"h18-tamper-{os.getpid()}:1"
    subprocess.run(["docker", "import", "-", ref], input=archive.getvalue(), check=True, capture_output=True)
    engine = docker.from_env()
    yield engine, local_image(engine, ref)
    engine.images.remove(ref, force=True)


def _quiet() -> TransferProgress:
    return TransferProgress(io.StringIO())


def test_a_blob_damaged_on_the_way_is_refused_and_sent_again_and_a_present_one_never(
    registry: tuple[int, Path], image: tuple[docker.DockerClient, LocalImage]
) -> None:
    port, storage = registry
    engine, pushed = image
    proxy = TamperingProxy(port)
    proxy.start()

    first = Push(engine, (pushed,), progress=_quiet)
    first.send(proxy)

    assert proxy.tampered and proxy.refusals, "the registry did not refuse the damaged blob"
    assert proxy.sent > 2 * 3_000_000, "the refused blob was not sent again"
    blobs = list((storage / "docker/registry/v2/blobs/sha256").glob("*/*/data"))
    layer = max(blobs, key=lambda path: path.stat().st_size)
    assert hashlib.sha256(layer.read_bytes()).hexdigest() == layer.parent.name  # what arrived is what was meant
    assert layer.stat().st_size > 3_000_000

    again = TamperingProxy(port, tampered=True)  # no damage this time
    again.start()
    second = Push(engine, (pushed,), progress=_quiet)
    second.send(again)
    assert second.sent is not None and second.sent < 50_000, f"{second.sent} bytes for a blob the registry has"
    assert second.summary().endswith("(0 MB sent)")


def test_a_push_that_goes_silent_ends_in_one_line_not_a_traceback(
    image: tuple[docker.DockerClient, LocalImage],
) -> None:
    """A registry end that takes the connection and never answers: the engine's event stream goes quiet, and the
    client's read timeout (the deploy's is images.ENGINE_TIMEOUT; 3 s here) becomes the step's one line."""
    _, pushed = image
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody reads or answers
        quiet_end = TamperingProxy(0, port=silent.getsockname()[1])
        push = Push(docker.from_env(timeout=3), (pushed,), progress=_quiet)
        started = time.monotonic()
        with pytest.raises(ApplianceError, match=r"stalled or broke \(\w+\): deploy again") as refused:
            push.send(quiet_end)
    assert time.monotonic() - started < 30
    assert "\n" not in str(refused.value)
