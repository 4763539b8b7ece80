"""Images through a registry (Tencent TCR/CCR or any Docker registry): the operator pushes, the host pulls.

The push runs on the operator's machine through its Docker engine; on the host, a login step (the password
on standard input, never on a command line) and one pull step per image that is not there yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import docker
import docker.errors

from appliance.errors import ApplianceError
from appliance.images import LocalImage
from appliance.shell import sh
from appliance.steps import Action, Converge, Facts, Step, Stream


def registry_host(registry: str) -> str:
    """'ccr.ccs.tencentyun.com/team' → 'ccr.ccs.tencentyun.com': what `docker login` takes."""
    return registry.split("/", 1)[0]


def push(
    engine: docker.DockerClient, ref: str, user: str, password: str, progress: Callable[[str], None] | None = None
) -> None:
    """Push `ref` with these credentials; one line naming the registry and its reason when it refuses."""
    repository, tag = ref.rsplit(":", 1)
    auth = {"username": user, "password": password}
    try:
        for event in engine.api.push(repository, tag, auth_config=auth, stream=True, decode=True):
            if "error" in event:
                reason = str(event.get("errorDetail", {}).get("message") or event["error"])
                raise ApplianceError(f"push of {ref} refused by {registry_host(repository)}: {reason}")
            if progress and event.get("status"):
                progress(str(event["status"]))
    except docker.errors.APIError as exc:
        raise ApplianceError(f"push of {ref} failed: {exc.explanation or exc}") from None


@dataclass(frozen=True)
class _Password:
    """The registry password as the bytes a `docker login --password-stdin` reads."""

    value: str

    @property
    def size(self) -> int:
        return 0

    def chunks(self) -> Iterator[bytes]:
        yield self.value.encode()


@dataclass(frozen=True)
class RegistryLogin:
    """`docker login` on the host, so its engine may pull the release's images (runs on every deploy)."""

    registry: str
    user: str
    password: str

    @property
    def name(self) -> str:
        return f"registry login {registry_host(self.registry)}"

    def probes(self) -> Mapping[str, str]:
        return {}

    def plan(self, facts: Facts) -> list[Action]:
        login = sh("docker", "login", "--username", self.user, "--password-stdin", registry_host(self.registry))
        return [Stream(f"{login} >/dev/null", _Password(self.password), f"log in as {self.user}")]


def image_pulled(ref: str) -> Converge:
    """An image the host pulls from its registry, unless it has it already."""
    present = sh("docker", "image", "inspect", "--format", "{{.Id}}", ref)
    return Converge(f"image {ref}", present, f"{sh('docker', 'pull', '--quiet', ref)} >/dev/null", f"pull {ref}")


@dataclass(frozen=True)
class RegistryTransport:
    """`images.transport = "registry"`: the API image pushed from the operator's engine (not in check mode), the
    host logged in; the host pulls every image it lacks (the others must be in the registry already)."""

    engine: docker.DockerClient
    registry: str
    user: str
    password: str

    def steps(self, api: LocalImage, others: tuple[LocalImage, ...], check: bool) -> list[Step]:
        if not check:
            push(self.engine, api.ref, self.user, self.password)
        pulls = [image_pulled(image.ref) for image in (api, *others)]
        return [RegistryLogin(self.registry, self.user, self.password), *pulls]

    def prune_steps(self) -> list[Step]:
        return []  # the registry is the operator's to keep
