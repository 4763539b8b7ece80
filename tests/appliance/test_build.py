"""The API image's inputs: the hash lock, the wheelhouse download for the host's platform, the context tar."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from appliance.build import (
    BUILD_TOOLS,
    LOCK,
    SOURCE_DATE_EPOCH,
    SOURCE_ONLY,
    Locked,
    build_command,
    canonical_name,
    context_entries,
    context_tar,
    download_command,
    download_wheelhouse,
    missing_from_wheelhouse,
    parse_lock,
    prune_wheelhouse,
    split_lock,
    wheel_platforms,
)
from appliance.config import load_config
from appliance.errors import ApplianceError
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def requirements() -> list[Requirement]:
    lines = (REPO / "service/requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_the_lock_pins_every_requirement_at_a_version_it_allows_with_hashes() -> None:
    locked = {item.name: item for item in parse_lock((REPO / LOCK).read_text())}
    for requirement in requirements():
        item = locked[canonical_name(requirement.name)]
        version = item.text.splitlines()[0].split("==")[1].rstrip(" \\")
        assert requirement.specifier.contains(version), f"{requirement} but the lock pins {version}"
        assert item.hashes
    assert all(canonical_name(name) in locked for name in (*SOURCE_ONLY, *BUILD_TOOLS))
    assert canonical_name("cos_python_sdk.v5") == canonicalize_name("cos_python_sdk.v5") == "cos-python-sdk-v5"


def test_a_lock_line_without_hashes_is_refused_naming_the_file() -> None:
    text = "fastapi==0.165.0 \\\n    --hash=sha256:" + "a" * 64 + "\nredis==8.1.0\n"
    with pytest.raises(ApplianceError, match=r"^service/requirements.lock: 'redis==8.1.0' is not pinned .* header$"):
        parse_lock(text)
    with pytest.raises(ApplianceError, match="'redis>=5' is not pinned"):
        parse_lock("redis>=5 \\\n    --hash=sha256:" + "b" * 64 + "\n")


def test_the_build_tools_go_to_their_own_file_and_not_into_the_image() -> None:
    locked = parse_lock((REPO / LOCK).read_text())
    image, tools = split_lock(locked)
    assert {item.name for item in parse_lock(tools)} == set(BUILD_TOOLS)
    in_image = {item.name for item in parse_lock(image)}
    assert in_image.isdisjoint(BUILD_TOOLS)
    assert in_image | set(BUILD_TOOLS) == {item.name for item in locked}


def supported(platform: str) -> set[Tag]:
    """What pip accepts for the download command's flags (the same computation pip makes)."""
    command = download_command("python3", platform, Path("lock"), Path("out"))
    platforms = [command[index + 1] for index, arg in enumerate(command) if arg == "--platform"]
    abi = command[command.index("--abi") + 1]
    return set(cpython_tags((3, 11), [abi], platforms)) | set(compatible_tags((3, 11), "cp311", platforms))


@pytest.mark.parametrize(
    ("platform", "accepted", "refused"),
    [
        (
            "linux/amd64",
            [
                "pydantic_core-2.50.5-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
                "argon2_cffi_bindings-26.2.0-cp310-abi3-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl",
                "charset_normalizer-3.5.3-cp311-cp311-manylinux1_x86_64.manylinux_2_28_x86_64.manylinux_2_5_x86_64.whl",
                "fastapi-0.165.0-py3-none-any.whl",
            ],
            [
                "pydantic_core-2.50.5-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.whl",
                "pydantic_core-2.50.5-cp310-cp310-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
                "pydantic_core-2.50.5-cp311-cp311-macosx_11_0_arm64.whl",
                "pydantic_core-2.50.5-cp311-cp311-musllinux_1_1_x86_64.whl",
                "somepkg-1.0-cp311-cp311-manylinux_2_39_x86_64.whl",  # newer glibc than bookworm's 2.36
            ],
        ),
        (
            "linux/arm64",
            [
                "pydantic_core-2.50.5-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.whl",
                "argon2_cffi_bindings-26.2.0-cp310-abi3-manylinux_2_26_aarch64.manylinux_2_28_aarch64.whl",
                "fastapi-0.165.0-py3-none-any.whl",
            ],
            [
                "pydantic_core-2.50.5-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
                "pydantic_core-2.50.5-cp311-cp311-macosx_11_0_arm64.whl",
            ],
        ),
    ],
)
def test_the_wheelhouse_is_for_the_image_python_and_the_host_platform(
    platform: str, accepted: list[str], refused: list[str]
) -> None:
    tags = supported(platform)
    for name in accepted:
        assert parse_wheel_filename(name)[3] & tags, name
    for name in refused:
        assert not parse_wheel_filename(name)[3] & tags, name


def test_the_download_is_hash_checked_binary_only_but_for_the_source_only_packages() -> None:
    command = download_command("/opt/py310/bin/python3", "linux/arm64", Path("service/requirements.lock"), Path("w"))
    assert command[:4] == ["/opt/py310/bin/python3", "-m", "pip", "download"]
    for flag in ("--no-deps", "--require-hashes", "--only-binary=:all:", "--no-binary=cos-python-sdk-v5,crcmod"):
        assert flag in command
    assert command[command.index("--python-version") + 1] == "3.11"
    assert command[command.index("--implementation") + 1] == "cp"
    assert command[-4:] == ["--dest", "w", "--requirement", "service/requirements.lock"]
    assert wheel_platforms("linux/arm64")[-1] == "manylinux2014_aarch64"
    assert "manylinux_2_28_x86_64" in wheel_platforms("linux/amd64")


def test_the_build_goes_to_the_configured_platform_with_a_context_on_stdin() -> None:
    settings = load_config(REPO / "appliance.example.toml").settings
    arm = settings.model_copy(update={"images": settings.images.model_copy(update={"platform": "linux/arm64"})})
    command = build_command("cvm-appliance/api:v7", arm)
    assert command[command.index("--platform") + 1] == "linux/arm64"
    assert command[-1] == "-" and "--no-cache" not in command
    assert f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}" in command
    assert not any("SERVICE_VERSION" in word for word in command)  # the same commit builds the same image
    assert "--no-cache" in build_command("cvm-appliance/api:v7", arm, no_cache=True)


def checkout(root: Path, stamp: int, umask_mode: int) -> list[Path]:
    """A small service tree whose files carry `stamp` as mtime and `umask_mode` as mode, plus a stray cache."""
    files = {
        "service/main.py": b"app = 1\n",
        "service/web/index.html": b"<p>hi</p>\n",
        "service/run.sh": b"#!/bin/sh\n",
    }
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(umask_mode | (0o111 if name.endswith(".sh") else 0))
        os.utime(path, (stamp, stamp))
    (root / "service/__pycache__").mkdir()
    (root / "service/__pycache__/main.cpython-311.pyc").write_bytes(b"\0")
    wheel = root / "wheels/six-1.17.0-py2.py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK")
    os.utime(wheel, (stamp, stamp))
    return [wheel]


def test_the_context_is_the_same_bytes_whatever_the_checkout_times_and_umask(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    contexts = [
        context_tar(context_entries(root, checkout(root, stamp, mode), "image\n", "tools\n"))
        for root, stamp, mode in ((first, 1_700_000_000, 0o644), (second, 1_800_000_000, 0o664))
    ]
    assert contexts[0] == contexts[1]
    with tarfile.open(fileobj=io.BytesIO(contexts[0])) as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert list(members) == [
        "service", "service/main.py", "service/run.sh", "service/web", "service/web/index.html",
        "wheelhouse", "wheelhouse/image.txt", "wheelhouse/six-1.17.0-py2.py3-none-any.whl", "wheelhouse/tools.txt",
    ]  # fmt: skip
    assert {(member.mtime, member.uid, member.gid, member.uname) for member in members.values()} == {
        (SOURCE_DATE_EPOCH, 0, 0, "")
    }
    assert members["service/run.sh"].mode == 0o755 and members["service/main.py"].mode == 0o644
    assert members["service/web"].isdir() and members["service/web"].mode == 0o755


def test_the_wheelhouse_keeps_only_files_the_lock_names(tmp_path: Path) -> None:
    kept, stale = tmp_path / "six-1.17.0-py2.py3-none-any.whl", tmp_path / "six-1.16.0-py2.py3-none-any.whl"
    kept.write_bytes(b"new")
    stale.write_bytes(b"old")
    digest = hashlib.sha256(b"new").hexdigest()
    assert prune_wheelhouse(tmp_path, [Locked("six", "six==1.17.0\n", frozenset({digest}))]) == [kept]
    assert not stale.exists()


def test_pip_runs_only_when_the_wheelhouse_lacks_a_locked_file(tmp_path: Path) -> None:
    folder, lock = tmp_path / "wheelhouse", tmp_path / "requirements.lock"
    folder.mkdir()
    (folder / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"six")
    six, idna = hashlib.sha256(b"six").hexdigest(), hashlib.sha256(b"idna").hexdigest()
    lock.write_text(f"six==1.17.0 \\\n    --hash=sha256:{six}\nidna==3.10 \\\n    --hash=sha256:{idna}\n")
    locked = parse_lock(lock.read_text())
    assert [item.name for item in missing_from_wheelhouse(folder, locked)] == ["idna"]
    # `false` stands in for the python that runs pip: asked to download, the build fails in one line.
    with pytest.raises(ApplianceError, match="downloading the wheelhouse"):
        download_wheelhouse("/bin/false", "linux/amd64", lock, folder)
    (folder / "idna-3.10-py3-none-any.whl").write_bytes(b"idna")
    assert missing_from_wheelhouse(folder, locked) == []
    kept = download_wheelhouse("/bin/false", "linux/amd64", lock, folder)  # complete: pip never runs
    assert [path.name for path in kept] == ["idna-3.10-py3-none-any.whl", "six-1.17.0-py2.py3-none-any.whl"]
