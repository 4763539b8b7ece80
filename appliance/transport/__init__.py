"""How a release's images reach the host, chosen once from `images.transport`.

- `ssh` (default): only the layers the host lacks, pushed into the host's own loopback registry through an SSH
  port forward (`layers.py`);
- `archive`: whole images as one `docker save` stream over SSH (`appliance/images.py`), for a host whose sshd
  may not forward;
- `registry`: a registry both sides reach, e.g. Tencent TCR/CCR (`appliance/registry.py`).
"""

from __future__ import annotations

from typing import Protocol

import docker

from appliance.config import Settings
from appliance.images import ArchiveTransport, LocalImage
from appliance.registry import RegistryTransport
from appliance.secrets import Secrets
from appliance.steps import Step
from appliance.transport.layers import LayerTransport


class ImageTransport(Protocol):
    """The steps that give the host a release's images: `api` (the release's, built here) and `others`."""

    def steps(self, api: LocalImage, others: tuple[LocalImage, ...], check: bool) -> list[Step]: ...

    def prune_steps(self) -> list[Step]:
        """What goes after PruneReleases: storage of the transport's own on the host."""
        ...


def transport_secrets(settings: Settings) -> list[str]:
    """The secrets the configured transport needs."""
    return ["REGISTRY_PASSWORD"] if settings.images.transport == "registry" else []


def transport_for(settings: Settings, engine: docker.DockerClient, secrets: Secrets) -> ImageTransport:
    """The configured transport; its secrets must be there (deploy_secrets checked them)."""
    images = settings.images
    if images.transport == "registry":
        password = secrets.require(["REGISTRY_PASSWORD"])["REGISTRY_PASSWORD"].reveal()
        return RegistryTransport(engine, images.registry or "", images.registry_user or "", password)
    if images.transport == "archive":
        return ArchiveTransport()
    return LayerTransport(engine)
