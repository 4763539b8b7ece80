"""Whole images to a host over SSH (`images.transport = "archive"`): `docker save`, gzip, the SSH channel,
`docker load`; skipped when present. Also what every transport asks first: which images the host lacks.

A host that reaches no registry (mainland China, a locked-down VPC) still gets every image, the
third-party ones (postgres, redis, nginx) included, the same way as the service's own.
"""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import docker
import docker.errors

from appliance.errors import ApplianceError
from appliance.shell import sh
from appliance.steps import Action, Facts, Run, Step, Stream

LOAD = "gzip -dc | docker load --quiet"
CHUNK = 1 << 20
# How long a call to the operator's engine may stay silent. A push's event stream can: a big layer compressed on
# a busy machine, or a registry checking a blob that came over a thin link (the SDK's default, 60 s, ended such a
# deploy in a traceback).
ENGINE_TIMEOUT = 1800


def operator_engine() -> docker.DockerClient:
    """The operator's Docker engine, or one line saying how to start it."""
    try:
        engine = docker.from_env(timeout=ENGINE_TIMEOUT)
        engine.ping()
    except docker.errors.DockerException as exc:
        raise ApplianceError(
            f"the local Docker engine does not answer ({exc}): start it (systemctl start docker)"
        ) from None
    return engine


@dataclass(frozen=True)
class LocalImage:
    """An image in the operator's Docker engine."""

    ref: str
    image_id: str
    size: int


def local_image(client: docker.DockerClient, ref: str) -> LocalImage:
    """The local image `ref`, or one line saying how to get it."""
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise ApplianceError(f"image {ref} is not in the local Docker engine: build or pull it first") from None
    return LocalImage(ref, str(image.id), int(image.attrs.get("Size", 0)))


@dataclass(frozen=True)
class SavedImages:
    """`docker save` of several images as one archive (layers they share travel once), gzip-compressed at
    level 1: the link, not the CPU, is the bottleneck."""

    refs: tuple[str, ...]
    size: int

    def chunks(self) -> Iterator[bytes]:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip format
        # The CLI, like `docker build` before it: the SDK saves one image per archive.
        with subprocess.Popen(["docker", "save", *self.refs], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as save:
            assert save.stdout is not None and save.stderr is not None
            for chunk in iter(lambda: save.stdout.read(CHUNK), b""):  # type: ignore[union-attr]
                compressed = compressor.compress(chunk)
                if compressed:
                    yield compressed
            failure = save.stderr.read().decode(errors="replace").strip()
        if save.returncode != 0:
            raise ApplianceError(f"docker save {' '.join(self.refs)} failed: {failure.splitlines()[-1:] or '?'}")
        yield compressor.flush()


def image_probes(images: tuple[LocalImage, ...]) -> dict[str, str]:
    """Per image: the ID the host has under its name, and whether it has that ID at all."""
    inspect = ("docker", "image", "inspect", "--format", "{{.Id}}")
    probes = {}
    for index, image in enumerate(images):
        probes[f"{index}:id"] = sh(*inspect, image.ref)
        probes[f"{index}:by_id"] = sh(*inspect, image.image_id)
    return probes


def missing_images(images: tuple[LocalImage, ...], facts: Facts) -> tuple[list[Action], list[LocalImage]]:
    """(a `docker tag` for each image the host has under another name, the images it lacks)."""
    tags: list[Action] = []
    missing: list[LocalImage] = []
    for index, image in enumerate(images):
        present, by_id = facts[f"{index}:id"], facts[f"{index}:by_id"]
        if present.ok and present.stdout.strip() == image.image_id:
            continue
        if by_id.ok:
            # The host has these very layers under another name (a rollback, a re-tagged build).
            tags.append(Run(sh("docker", "tag", image.image_id, image.ref), f"tag the host's copy as {image.ref}"))
        else:
            missing.append(image)
    return tags, missing


@dataclass(frozen=True)
class ImagesOnHost:
    """The host's Docker engine has each image (same ID) under its name: the missing ones are sent in one
    archive, those whose layers the host has under another name are only tagged (`images.transport = "archive"`)."""

    images: tuple[LocalImage, ...]

    name = "images"

    def probes(self) -> Mapping[str, str]:
        return image_probes(self.images)

    def plan(self, facts: Facts) -> list[Action]:
        actions, missing = missing_images(self.images, facts)
        if missing:
            size = sum(image.size for image in missing)
            names = ", ".join(image.ref for image in missing)
            source = SavedImages(tuple(image.ref for image in missing), size)
            actions.append(Stream(LOAD, source, f"send {names} ({size // 1_000_000} MB) over SSH"))
        return actions


def images_on_host(client: docker.DockerClient, refs: list[str]) -> ImagesOnHost:
    """One step for all the images; an image missing locally is an error before anything is sent."""
    return ImagesOnHost(tuple(local_image(client, ref) for ref in dict.fromkeys(refs)))


@dataclass(frozen=True)
class ArchiveTransport:
    """`images.transport = "archive"`: whole images in one `docker save` stream (ImagesOnHost)."""

    def steps(self, api: LocalImage, others: tuple[LocalImage, ...], check: bool) -> list[Step]:
        return [ImagesOnHost((api, *others))]

    def prune_steps(self) -> list[Step]:
        return []


def local_id(engine: docker.DockerClient, ref: str) -> str:
    """The image's ID in the operator's engine; "" for one only the host has (pulled from a registry)."""
    try:
        return str(engine.images.get(ref).id)
    except docker.errors.ImageNotFound:
        return ""


def sent_api_image(engine: docker.DockerClient, image: str, release_image: str, check: bool) -> LocalImage:
    """The API image as the host gets it, under the release's name: `image` from the local engine, or, in check
    mode (which builds nothing), the release's own image still to be built."""
    if check and image == release_image and not local_id(engine, image):
        return LocalImage(release_image, "", 0)  # no ID yet: the host cannot have it
    found = local_image(engine, image)
    return LocalImage(release_image, found.image_id, found.size)


def other_images(engine: docker.DockerClient, refs: list[str], api: LocalImage) -> tuple[LocalImage, ...]:
    """A release's images but the API's, as the local engine has them."""
    return images_on_host(engine, [ref for ref in refs if ref != api.ref]).images
