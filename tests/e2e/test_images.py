"""Images travel to the host over the SSH connection itself; a second send is skipped."""

from __future__ import annotations

import io
import subprocess
import tarfile

import docker
import pytest

from appliance.executor import Executor
from appliance.images import images_on_host
from appliance.remote import RemoteHost
from tests.conftest import RUN_ID

pytestmark = pytest.mark.e2e


def test_image_is_sent_once_and_lands_with_the_same_id(bootstrapped_host: RemoteHost) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        entry = tarfile.TarInfo("hello.txt")
        entry.size = 3_000_000
        tar.addfile(entry, io.BytesIO(b"x" * entry.size))
    ref = f"{RUN_ID}-tiny:v1"
    subprocess.run(["docker", "import", "-", ref], input=archive.getvalue(), check=True, capture_output=True)
    engine = docker.from_env()
    try:
        step = images_on_host(engine, [ref])
        reports: list[tuple[str, int, int]] = []
        first = Executor(bootstrapped_host, progress=lambda why, done, total: reports.append((why, done, total)))
        outcome = first.apply(step)
        assert outcome.status == "changed", outcome.error
        assert reports and reports[-1][0] == f"send {ref} (3 MB) over SSH"
        assert 0 < reports[-1][1] < 3_000_000  # gzip shrinks a file of one repeated byte
        landed = bootstrapped_host.run(f"docker image inspect --format '{{{{.Id}}}}' {ref}").stdout.strip()
        assert landed == engine.images.get(ref).id
        assert Executor(bootstrapped_host).apply(step).status == "ok"
    finally:
        bootstrapped_host.run(f"docker rmi -f {ref}")
        engine.images.remove(ref, force=True)
