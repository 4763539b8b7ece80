"""Images to a host over SSH: `docker save`, gzip, the SSH channel, `docker load`; skipped when present.

A host that reaches no registry (mainland China, a locked-down VPC) still gets every image, the
third-party ones (postgres, redis, nginx) included, the same way as the service's own.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import docker
import docker.errors

from appliance.errors import ApplianceError
from appliance.shell import sh
from appliance.steps import Action, Facts, Run, Stream

LOAD = "gzip -dc | docker load --quiet"


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
class SavedImage:
    """`docker save` of one image, gzip-compressed (level 1: the link, not the CPU, is the bottleneck)."""

    client: docker.DockerClient
    ref: str
    size: int

    def chunks(self) -> Iterator[bytes]:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip format
        # Saved by this exact reference: Image.save(named=True) would use the image's first tag instead.
        for chunk in self.client.api.get_image(self.ref):
            compressed = compressor.compress(chunk)
            if compressed:
                yield compressed
        yield compressor.flush()


@dataclass(frozen=True)
class ImageOnHost:
    """The host's Docker engine has `image` (same ID) under its name."""

    client: docker.DockerClient
    image: LocalImage

    @property
    def name(self) -> str:
        return f"image {self.image.ref}"

    def probes(self) -> Mapping[str, str]:
        inspect = ("docker", "image", "inspect", "--format", "{{.Id}}")
        return {"id": sh(*inspect, self.image.ref), "by_id": sh(*inspect, self.image.image_id)}

    def plan(self, facts: Facts) -> list[Action]:
        if facts["id"].ok and facts["id"].stdout.strip() == self.image.image_id:
            return []
        if facts["by_id"].ok:
            # The host has these very layers under another name (a rollback, a re-tagged build).
            return [
                Run(
                    sh("docker", "tag", self.image.image_id, self.image.ref), f"tag the host's copy as {self.image.ref}"
                )
            ]
        megabytes = self.image.size // 1_000_000
        source = SavedImage(self.client, self.image.ref, self.image.size)
        return [Stream(LOAD, source, f"send {self.image.ref} ({megabytes} MB) over SSH")]


def images_on_host(client: docker.DockerClient, refs: list[str]) -> list[ImageOnHost]:
    """One step per image, in order; an image missing locally is an error before anything is sent."""
    return [ImageOnHost(client, local_image(client, ref)) for ref in refs]
