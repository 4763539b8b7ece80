"""Images the test rig builds from the sandbox's Debian base, standing in for registry images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import docker
import docker.errors

from appliance.sandbox import BASE_IMAGE

IMAGES_DIR = Path(__file__).resolve().parent / "images"


def _content_tag(folder: Path) -> str:
    digest = hashlib.sha256(BASE_IMAGE.encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def rig_image(client: docker.DockerClient, name: str) -> str:
    """`cvm-rig/NAME:<content hash>`, built once per content (postgres, redis or nginx)."""
    folder = IMAGES_DIR / name
    ref = f"cvm-rig/{name}:{_content_tag(folder)}"
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        client.images.build(
            path=str(folder), tag=ref, buildargs={"BASE_IMAGE": BASE_IMAGE}, rm=True, forcerm=True, pull=False
        )
    return ref
