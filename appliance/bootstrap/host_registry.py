"""The host's own registry for `images.transport = "ssh"`: Debian's docker-registry on 127.0.0.1 only.

Deploy pushes layers into it through an SSH port forward (`appliance/transport/layers.py`); sshd allows
local forwarding to that address only (`access.sshd_drop_in`). Its storage holds the compressed blobs of the
kept releases' images (pruned with them, `transport.layers.PruneHostRegistry`): docs/deploy.md.
"""

from __future__ import annotations

from appliance.bootstrap.system import service_running
from appliance.config import Settings
from appliance.render import render_host_template
from appliance.steps import ConfigFiles, ManagedFile, Packages, Step
from appliance.transport.layers import HOST_REGISTRY, REGISTRY_CONFIG, REGISTRY_STORAGE


def forwarded_address(settings: Settings) -> str | None:
    """The one address sshd lets the operator forward to: the host's registry, with the `ssh` transport."""
    return HOST_REGISTRY if settings.images.transport == "ssh" else None


def host_registry_steps(settings: Settings) -> list[Step]:
    """Package, config (loopback, deletes on), running: only for the `ssh` transport."""
    if forwarded_address(settings) is None:
        return []
    config = ManagedFile(
        REGISTRY_CONFIG,
        render_host_template("docker-registry.yml.j2", address=HOST_REGISTRY, storage=REGISTRY_STORAGE),
    )
    return [
        Packages("host registry", ("docker-registry",)),
        ConfigFiles("host registry config", (config,), "systemctl restart docker-registry", "restart docker-registry"),
        service_running("docker-registry"),
    ]
