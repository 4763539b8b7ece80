"""Image transports as decisions: what the layer step pushes and pulls, what pruning drops, which transport runs."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import docker
import pytest
from rich.console import Console

from appliance.bootstrap import ASSUMED_FACTS
from appliance.bootstrap.access import sshd_drop_in
from appliance.bootstrap.host_registry import host_registry_steps
from appliance.config import load_config
from appliance.errors import ApplianceError
from appliance.images import ArchiveTransport, LocalImage
from appliance.progress import TransferProgress, line
from appliance.registry import RegistryTransport
from appliance.secrets import Secret, Secrets
from appliance.steps import Fact, Forward, Note, Run
from appliance.transport import transport_for, transport_secrets
from appliance.transport.layers import (
    NO_REGISTRY,
    REPOSITORIES,
    ImagesFromHostRegistry,
    LayersOnHost,
    LayerTransport,
    PruneHostRegistry,
    Push,
    pull_command,
    pushed_bytes,
    registry_name,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
API = LocalImage("cvm-appliance/api:v3", "sha256:" + "a" * 64, 312_000_000)
PG = LocalImage("postgres:16-bookworm", "sha256:" + "b" * 64, 420_000_000)
ENGINE = docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41")  # plans never call it
STEP = LayersOnHost((API, PG), ENGINE)
UP, DOWN = Fact("", 0), Fact("curl: (7) Failed to connect", 7)


def facts(registry: Fact, *per_image: tuple[Fact, Fact]) -> dict[str, Fact]:
    pairs = {f"{index}:{key}": pair[k] for index, pair in enumerate(per_image) for k, key in enumerate(("id", "by_id"))}
    return {**pairs, "registry": registry}


PRESENT = [(Fact(image.image_id, 0), Fact(image.image_id, 0)) for image in STEP.images]
ABSENT = (Fact("", 1), Fact("", 1))


def test_names_in_the_host_registry_drop_a_registry_host_and_keep_the_tag() -> None:
    assert registry_name("cvm-appliance/api:v3") == "cvm-appliance/api:v3"
    assert registry_name("postgres:16-bookworm") == "postgres:16-bookworm"
    assert registry_name("ccr.ccs.tencentyun.com/team/api:v1") == "team/api:v1"
    assert registry_name("localhost:5000/x") == "x:latest"
    assert registry_name("redis@sha256:" + "e" * 64) == "redis:sha256-" + "e" * 64


def test_images_the_host_has_need_neither_a_push_nor_its_registry() -> None:
    assert STEP.plan(facts(DOWN, *PRESENT)) == [Note("the host has every image (0 MB sent)")]
    assert ImagesFromHostRegistry(STEP.images).plan(facts(DOWN, *PRESENT)) == []


def test_missing_images_are_pushed_through_the_forward_then_pulled_and_named() -> None:
    tagged = (Fact("", 1), Fact(API.image_id, 0))
    (push,) = STEP.plan(facts(UP, tagged, ABSENT))
    assert isinstance(push, Forward) and push.port == 5000
    assert isinstance(push.transfer, Push) and push.transfer.images == (PG,)
    assert push.transfer.summary() == "push postgres:16-bookworm into the host's registry (only the layers it lacks)"
    tag, pull = ImagesFromHostRegistry(STEP.images).plan(facts(UP, tagged, ABSENT))
    assert tag == Run(f"docker tag {API.image_id} cvm-appliance/api:v3", "tag the host's copy as cvm-appliance/api:v3")
    assert pull == Run(pull_command([PG]), "pull postgres:16-bookworm from the host's registry")
    assert "docker pull --quiet 127.0.0.1:5000/postgres:16-bookworm >/dev/null " in pull.command
    assert "&& docker tag 127.0.0.1:5000/postgres:16-bookworm postgres:16-bookworm " in pull.command


def test_pulls_run_side_by_side_and_one_failure_fails_them_all(tmp_path: Path) -> None:
    images = [LocalImage(f"img{index}:1", f"sha256:{index}", 1) for index in range(3)]
    log = tmp_path / "log"
    for failing in ("", "img1"):
        (tmp_path / "docker").write_text(
            f'#!/bin/sh\necho "$*" >> {log}\n[ "$1 $3" = "pull 127.0.0.1:5000/{failing}:1" ] && exit 1\n'
            'case "$1" in pull) sleep 0.3;; esac\nexit 0\n'
        )
        (tmp_path / "docker").chmod(0o755)
        started = time.monotonic()
        done = subprocess.run(["/bin/bash", "-c", pull_command(images)], env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
        assert done.returncode == (1 if failing else 0)
        if not failing:
            assert time.monotonic() - started < 0.8  # three pulls of 0.3 s each, side by side
            calls = log.read_text().splitlines()
            assert sorted(call for call in calls if call.startswith("tag")) == [
                f"tag 127.0.0.1:5000/img{index}:1 img{index}:1" for index in range(3)
            ]
        log.unlink()


def test_a_host_without_its_registry_gets_one_line_naming_the_fix() -> None:
    with pytest.raises(ApplianceError) as refused:
        STEP.plan(facts(DOWN, ABSENT, ABSENT))
    assert str(refused.value) == NO_REGISTRY
    assert "run inv bootstrap" in NO_REGISTRY


def test_the_summary_says_what_travelled_once_pushed() -> None:
    push = Push(ENGINE, (API,), sent=12_400_000)
    assert push.summary() == "push cvm-appliance/api:v3 into the host's registry (12 MB sent)"
    assert Push(ENGINE, (API,), sent=0).summary().endswith("(0 MB sent)")


def test_progress_counts_only_the_layers_that_are_pushed() -> None:
    events: list[dict[str, object]] = [
        {"status": "Preparing", "id": "l1"},
        {"status": "Layer already exists", "id": "l0"},
        {"status": "Pushing", "id": "l1", "progressDetail": {"current": 4, "total": 10}},
        {"status": "Pushing", "id": "l2", "progressDetail": {"current": 1, "total": 30}},
        {"status": "Pushed", "id": "l1"},
    ]
    layers: dict[str, tuple[int, int]] = {}
    for event in events:
        layers = pushed_bytes(layers, event)
    assert layers == {"l1": (10, 10), "l2": (1, 30)}


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one() -> None:
    plain = io.StringIO()
    with TransferProgress(plain, interval=0) as shown:
        shown.update("api:v3", 45_000_000, 120_000_000)
        shown.finish("api:v3", "12 MB sent")
    first, last = plain.getvalue().splitlines()
    assert first.startswith("  api:v3: 45/120 MB, ") and "MB/s, ETA" in first
    assert last == "  api:v3: 12 MB sent"
    assert line(45_000_000, 120_000_000, 10) == "45/120 MB, 4.5 MB/s, ETA 17 s"
    terminal = io.StringIO()
    with TransferProgress(interval=0, console=Console(file=terminal, force_terminal=True)) as shown:
        shown.update("api:v3", 45_000_000, 120_000_000)
        shown.finish("api:v3", "12 MB sent")
    assert "api:v3: 12 MB sent" in terminal.getvalue() and "\x1b[" in terminal.getvalue()


def test_pruning_the_registry_keeps_what_the_host_engine_keeps() -> None:
    listing = "\n".join(
        f"{REPOSITORIES}/{name}/_manifests/tags/{tag}"
        for name, tag in (("cvm-appliance/api", "v1"), ("cvm-appliance/api", "v2"), ("postgres", "16-bookworm"))
    )
    kept = "cvm-appliance/api:v2\npostgres:16-bookworm\n<none>:<none>\n"
    (drop,) = PruneHostRegistry().plan({"tags": Fact(listing, 0), "images": Fact(kept, 0)})
    assert isinstance(drop, Run) and drop.why == "drop cvm-appliance/api:v1 and unused blobs"
    assert (
        f"rm -rf {REPOSITORIES}/cvm-appliance/api/_manifests/tags/v1 && systemctl stop docker-registry" in drop.command
    )
    assert "docker-registry garbage-collect --delete-untagged /etc/docker/registry/config.yml" in drop.command
    everything = kept + "cvm-appliance/api:v1\n"
    assert PruneHostRegistry().plan({"tags": Fact(listing, 0), "images": Fact(everything, 0)}) == []


def test_pruning_runs_its_garbage_collection_with_the_registry_restarted_even_when_it_fails(tmp_path: Path) -> None:
    listing = f"{REPOSITORIES}/old/_manifests/tags/1"
    (drop,) = PruneHostRegistry().plan({"tags": Fact(listing, 0), "images": Fact("", 0)})
    assert isinstance(drop, Run)
    calls = tmp_path / "calls"
    for program, status in (("systemctl", 0), ("docker-registry", 3), ("rm", 0)):
        (tmp_path / program).write_text(f'#!/bin/sh\necho "{program} $*" >> {calls}\nexit {status}\n')
        (tmp_path / program).chmod(0o755)
    done = subprocess.run(["/bin/bash", "-c", drop.command], env={"PATH": str(tmp_path)}, capture_output=True)
    assert done.returncode == 3
    assert [call.split()[:2] for call in calls.read_text().splitlines()] == [
        ["rm", "-rf"],
        ["systemctl", "stop"],
        ["docker-registry", "garbage-collect"],
        ["systemctl", "start"],
    ]


def test_the_transport_is_chosen_once_from_config(tmp_path: Path) -> None:
    example = (REPO / "appliance.example.toml").read_text()
    secrets = Secrets({"REGISTRY_PASSWORD": Secret("pw")}, tmp_path / "secrets.env")
    chosen = {}
    for transport in ("ssh", "archive", "registry"):
        text = example.replace('transport = "ssh"', f'transport = "{transport}"')
        if transport == "registry":
            text = text.replace('# registry = "', 'registry = "').replace('# registry_user = "', 'registry_user = "')
        path = tmp_path / f"{transport}.toml"
        path.write_text(text)
        settings = load_config(path).settings
        chosen[transport] = (type(transport_for(settings, ENGINE, secrets)), transport_secrets(settings))
    assert chosen == {
        "ssh": (LayerTransport, []),
        "archive": (ArchiveTransport, []),
        "registry": (RegistryTransport, ["REGISTRY_PASSWORD"]),
    }


def test_only_the_ssh_transport_installs_the_host_registry_and_opens_a_forward_to_it(tmp_path: Path) -> None:
    example = (REPO / "appliance.example.toml").read_text()
    archive = tmp_path / "archive.toml"
    archive.write_text(example.replace('transport = "ssh"', 'transport = "archive"'))
    assert host_registry_steps(load_config(archive).settings) == []
    steps = host_registry_steps(load_config(REPO / "appliance.example.toml").settings)
    assert [step.name for step in steps] == [
        "packages: host registry",
        "host registry config",
        "service docker-registry",
    ]
    config = steps[1].files[0].content.decode()  # type: ignore[attr-defined]
    assert "addr: 127.0.0.1:5000" in config and "enabled: true" in config
    forwarding = sshd_drop_in(ASSUMED_FACTS, "127.0.0.1:5000").decode()
    assert "AllowTcpForwarding local\nPermitOpen 127.0.0.1:5000\n" in forwarding
    assert "AllowTcpForwarding no\nPermitTunnel no\n" in sshd_drop_in(ASSUMED_FACTS).decode()
