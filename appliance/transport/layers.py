"""Images as layers (`images.transport = "ssh"`, the default): only the layers the host lacks travel.

The host runs Debian's `docker-registry` (the distribution registry) on 127.0.0.1 only (bootstrap,
`appliance/bootstrap/host_registry.py`). The operator's engine pushes into it through an SSH port forward
(`appliance/tunnel.py`): the registry answers a HEAD per blob, so a layer it has is never sent, checks each
uploaded blob's digest (a blob damaged on the way is refused and docker sends it again), and keeps finished
blobs, so a push cut halfway resumes with the layers that did not arrive. The host's engine then pulls from
127.0.0.1 (a loopback registry needs no TLS in dockerd) and tags the images with their own names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import docker
import docker.errors
import urllib3.exceptions
from docker.utils import parse_repository_tag

from appliance.errors import ApplianceError
from appliance.images import LocalImage, image_probes, missing_images
from appliance.progress import TransferProgress
from appliance.shell import sh
from appliance.steps import Action, Facts, Forward, Note, Run, Step, TunnelEnd

HOST_REGISTRY_PORT = 5000
HOST_REGISTRY = f"127.0.0.1:{HOST_REGISTRY_PORT}"
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"  # where Debian's docker-registry.service reads it
REGISTRY_STORAGE = "/var/lib/docker-registry"  # the package's own folder, owned by its user
NO_REGISTRY = (
    f"the host's registry does not answer on {HOST_REGISTRY}: run inv bootstrap "
    "(it installs docker-registry for images.transport 'ssh')"
)


def registry_name(ref: str) -> str:
    """`ref`'s name in the host's registry: without a registry host of its own; a digest becomes a tag."""
    repository, tag = parse_repository_tag(ref)
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        repository = rest
    return f"{repository}:{(tag or 'latest').replace(':', '-')}"


def pull_command(images: list[LocalImage]) -> str:
    """The host pulls each image from its own registry, side by side (dockerd fetches a layer two pulls share
    once), and keeps it under its own name only; any failed pull fails the whole."""
    pulls = []
    for image in images:
        local = f"{HOST_REGISTRY}/{registry_name(image.ref)}"
        pulls.append(
            f"( docker pull --quiet {sh(local)} >/dev/null && docker tag {sh(local, image.ref)} "
            f'&& docker image rm {sh(local)} >/dev/null ) & pids="$pids $!"'
        )
    return f"pids=; {'; '.join(pulls)}; failed=0; for pid in $pids; do wait $pid || failed=1; done; exit $failed"


@dataclass(eq=False)
class Push:
    """The operator's engine pushes `images` into the host's registry through the tunnel; `sent`: the bytes that
    went towards the host (None until it ran)."""

    engine: docker.DockerClient
    images: tuple[LocalImage, ...]
    progress: Callable[[], TransferProgress] = TransferProgress
    sent: int | None = field(default=None)

    def summary(self) -> str:
        names = ", ".join(image.ref for image in self.images)
        if self.sent is None:
            return f"push {names} into the host's registry (only the layers it lacks)"
        return f"push {names} into the host's registry ({self.sent // 1_000_000} MB sent)"

    def send(self, tunnel: TunnelEnd) -> None:
        # Images push side by side (dockerd compresses each layer it sends: on a fresh host that CPU, not the
        # link, can be the bottleneck), except that one sharing a layer with an image before it waits for that
        # one: its push then finds the layer in the registry instead of sending it a second time.
        layers = [set(self.engine.images.get(image.image_id).attrs["RootFS"]["Layers"]) for image in self.images]
        with self.progress() as shown, ThreadPoolExecutor(max_workers=len(self.images)) as pool:
            pushed: list[Future[None]] = []
            for index, image in enumerate(self.images):
                first = [pushed[before] for before in range(index) if layers[before] & layers[index]]
                pushed.append(pool.submit(self._push_after, first, image, tunnel, shown))
            for future in pushed:
                future.result()
        self.sent = tunnel.sent

    def _push_after(
        self, first: list[Future[None]], image: LocalImage, tunnel: TunnelEnd, shown: TransferProgress
    ) -> None:
        for future in first:
            future.result()  # its failure is reported by its own future
        self._push(image, tunnel, shown)
        shown.finish(image.ref, "pushed")

    def _push(self, image: LocalImage, tunnel: TunnelEnd, shown: TransferProgress) -> None:
        repository, tag = f"127.0.0.1:{tunnel.port}/{registry_name(image.ref)}".rsplit(":", 1)
        self.engine.api.tag(image.image_id, repository, tag)
        layers: dict[str, tuple[int, int]] = {}  # layer → (bytes read, size), as docker counts them
        try:
            for event in self.engine.api.push(repository, tag, stream=True, decode=True):
                if "error" in event:
                    reason = str(event.get("errorDetail", {}).get("message") or event["error"])
                    raise ApplianceError(f"push of {image.ref} into the host's registry failed: {reason}")
                if tunnel.broken:
                    raise ApplianceError(
                        f"SSH connection lost while pushing {image.ref}: deploy again (layers that arrived stay)"
                    )
                layers = pushed_bytes(layers, event)
                if layers:
                    shown.update(image.ref, *map(sum, zip(*layers.values(), strict=True)))
        except docker.errors.APIError as exc:
            reason = exc.explanation or exc
            raise ApplianceError(f"push of {image.ref} into the host's registry failed: {reason}") from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # requests' errors are OSErrors; a stalled read is not
            raise ApplianceError(
                f"push of {image.ref} into the host's registry stalled or broke ({type(exc).__name__}): "
                "deploy again (layers that arrived stay)"
            ) from None
        finally:
            with contextlib.suppress(docker.errors.APIError):
                self.engine.api.remove_image(f"{repository}:{tag}", noprune=True)


def pushed_bytes(layers: dict[str, tuple[int, int]], event: Mapping[str, object]) -> dict[str, tuple[int, int]]:
    """Each layer's (bytes read, size) after one of docker's push events; layers the host has never count."""
    layer, status, detail = str(event.get("id", "")), event.get("status"), event.get("progressDetail")
    if status == "Pushing" and isinstance(detail, Mapping) and detail.get("total"):
        return {**layers, layer: (int(detail.get("current", 0)), int(detail["total"]))}
    if status == "Pushed" and layer in layers:
        return {**layers, layer: (layers[layer][1], layers[layer][1])}
    return layers


@dataclass(frozen=True)
class LayersOnHost:
    """The images the host's engine lacks (by ID) are pushed into its registry: only the layers it lacks travel.
    The detail ends with what that cost, `(N MB sent)`."""

    images: tuple[LocalImage, ...]
    engine: docker.DockerClient

    name = "images"

    def probes(self) -> Mapping[str, str]:
        answers = f"curl -fsS -o /dev/null --max-time 5 http://{HOST_REGISTRY}/v2/"
        return {**image_probes(self.images), "registry": answers}

    def plan(self, facts: Facts) -> list[Action]:
        _, missing = missing_images(self.images, facts)
        if not missing:
            return [Note("the host has every image (0 MB sent)")]
        if not facts["registry"].ok:
            raise ApplianceError(NO_REGISTRY)
        return [Forward(HOST_REGISTRY_PORT, Push(self.engine, tuple(missing)))]


@dataclass(frozen=True)
class ImagesFromHostRegistry:
    """Each image under its name in the host's engine: tagged when it has the layers under another name, else
    pulled from its own registry (after LayersOnHost), verified by digest as dockerd pulls."""

    images: tuple[LocalImage, ...]

    name = "images pulled"

    def probes(self) -> Mapping[str, str]:
        return image_probes(self.images)

    def plan(self, facts: Facts) -> list[Action]:
        actions, missing = missing_images(self.images, facts)
        if missing:
            names = ", ".join(image.ref for image in missing)
            actions.append(Run(pull_command(missing), f"pull {names} from the host's registry"))
        return actions


REPOSITORIES = f"{REGISTRY_STORAGE}/docker/registry/v2/repositories"


def registry_tags(listing: str) -> list[tuple[str, str]]:
    """(name, tag) of each `REPOSITORIES/NAME/_manifests/tags/TAG` folder in `listing`."""
    tags = []
    for line in listing.splitlines():
        name, found, tag = line.removeprefix(REPOSITORIES + "/").partition("/_manifests/tags/")
        if found and tag and "/" not in tag:
            tags.append((name, tag))
    return sorted(tags)


@dataclass(frozen=True)
class PruneHostRegistry:
    """The registry keeps the images the host's engine keeps (the kept releases', after PruneReleases): other
    tags go, then garbage-collect drops the blobs no remaining image uses (registry stopped meanwhile)."""

    name = "prune host registry"

    def probes(self) -> Mapping[str, str]:
        tags = f"find {sh(REPOSITORIES)} -mindepth 4 -type d -path '*/_manifests/tags/*' -prune"
        return {"tags": tags, "images": "docker images --format '{{.Repository}}:{{.Tag}}'"}

    def plan(self, facts: Facts) -> list[Action]:
        kept = {registry_name(ref) for ref in facts["images"].stdout.split() if not ref.endswith(":<none>")}
        stale = [(name, tag) for name, tag in registry_tags(facts["tags"].stdout) if f"{name}:{tag}" not in kept]
        if not stale:
            return []
        folders = [f"{REPOSITORIES}/{name}/_manifests/tags/{tag}" for name, tag in stale]
        collect = sh("docker-registry", "garbage-collect", "--delete-untagged", REGISTRY_CONFIG)
        command = (
            f"rm -rf {sh(*folders)} && systemctl stop docker-registry "
            f"&& {{ {collect} >/dev/null; status=$?; systemctl start docker-registry; exit $status; }}"
        )
        return [Run(command, "drop " + ", ".join(f"{name}:{tag}" for name, tag in stale) + " and unused blobs")]


@dataclass(frozen=True)
class LayerTransport:
    """`images.transport = "ssh"`: LayersOnHost, ImagesFromHostRegistry; after pruning, PruneHostRegistry."""

    engine: docker.DockerClient

    def steps(self, api: LocalImage, others: tuple[LocalImage, ...], check: bool) -> list[Step]:
        images = (api, *others)
        return [LayersOnHost(images, self.engine), ImagesFromHostRegistry(images)]

    def prune_steps(self) -> list[Step]:
        return [PruneHostRegistry()]
