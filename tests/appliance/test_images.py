"""The image step sends only the images the host lacks, all in one archive, and tags what it has."""

from __future__ import annotations

import pytest

from appliance.images import LOAD, ImagesOnHost, LocalImage, SavedImages
from appliance.steps import Fact, Run, Stream

pytestmark = pytest.mark.unit

API = LocalImage("cvm-appliance/api:v3", "sha256:" + "a" * 64, 312_000_000)
PG = LocalImage("postgres:16-bookworm", "sha256:" + "b" * 64, 420_000_000)
REDIS = LocalImage("redis:7-bookworm", "sha256:" + "c" * 64, 130_000_000)
STEP = ImagesOnHost((API, PG, REDIS))


def facts(*per_image: tuple[Fact, Fact]) -> dict[str, Fact]:
    """The step's facts from (id, by_id) pairs, one pair per image in order."""
    return {f"{index}:{key}": pair[k] for index, pair in enumerate(per_image) for k, key in enumerate(("id", "by_id"))}


ABSENT = (Fact("", 1), Fact("", 1))


def test_same_ids_on_host_send_nothing() -> None:
    present = [(Fact(image.image_id, 0), Fact(image.image_id, 0)) for image in STEP.images]
    assert STEP.plan(facts(*present)) == []


def test_same_layers_under_another_name_are_tagged_and_the_rest_goes_in_one_archive() -> None:
    tagged = (Fact("", 1), Fact(API.image_id, 0))
    other_id = (Fact("sha256:" + "d" * 64, 0), Fact("", 1))
    tag, send = STEP.plan(facts(tagged, other_id, ABSENT))
    assert tag == Run(f"docker tag {API.image_id} cvm-appliance/api:v3", "tag the host's copy as cvm-appliance/api:v3")
    assert isinstance(send, Stream) and send.command == LOAD
    assert send.why == "send postgres:16-bookworm, redis:7-bookworm (550 MB) over SSH"
    assert send.source == SavedImages(("postgres:16-bookworm", "redis:7-bookworm"), 550_000_000)
