"""The image step sends an image only when the host lacks that exact image."""

from __future__ import annotations

import docker
import pytest

from appliance.images import LOAD, ImageOnHost, LocalImage
from appliance.steps import Fact, Run, Stream

pytestmark = pytest.mark.unit

# A client is only carried, never called, while planning.
OFFLINE = docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41")
IMAGE = LocalImage("cvm-appliance/api:v3", "sha256:" + "a" * 64, 312_000_000)


def test_same_id_on_host_sends_nothing() -> None:
    assert ImageOnHost(OFFLINE, IMAGE).plan({"id": Fact(IMAGE.image_id, 0), "by_id": Fact(IMAGE.image_id, 0)}) == []


def test_same_layers_under_another_name_are_tagged_not_sent() -> None:
    [action] = ImageOnHost(OFFLINE, IMAGE).plan({"id": Fact("", 1), "by_id": Fact(IMAGE.image_id, 0)})
    assert action == Run(
        f"docker tag {IMAGE.image_id} cvm-appliance/api:v3", "tag the host's copy as cvm-appliance/api:v3"
    )


@pytest.mark.parametrize("fact", [Fact("", 1), Fact("sha256:" + "b" * 64, 0)], ids=["absent", "other-id"])
def test_absent_or_different_image_is_streamed(fact: Fact) -> None:
    [action] = ImageOnHost(OFFLINE, IMAGE).plan({"id": fact, "by_id": Fact("", 1)})
    assert isinstance(action, Stream)
    assert action.command == LOAD
    assert action.why == "send cvm-appliance/api:v3 (312 MB) over SSH"
