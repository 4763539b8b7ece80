"""The service image, built by the operator's engine for the host's platform, the same layers every time.

The wheelhouse is downloaded on the operator's side (no package index inside a build container) for the image's
Python and platform, whatever the operator runs, from the hash-locked service/requirements.lock; the build
context is a tar made here, so no checkout time, owner or umask reaches a layer. docs/deploy.md, "The API image".
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from appliance.config import Config, Settings
from appliance.errors import ApplianceError
from appliance.render import BUNDLE_ROOT, api_image

LOCK = "service/requirements.lock"
DOCKERFILE = "service/Dockerfile"
WHEELHOUSE = "build/wheelhouse"  # one folder per platform, so amd64 and arm64 wheels never mix
# Every file of the context and every file a RUN writes gets this time (1980-01-01, the oldest a zip can hold):
# a constant, so a layer whose inputs did not change is the same layer in the next commit's image too.
SOURCE_DATE_EPOCH = 315532800
# Published as source only: pip downloads their sdists, the image's own Python builds them.
SOURCE_ONLY = ("cos-python-sdk-v5", "crcmod")
# The image build's own tools: in the wheelhouse (tools.txt), not in the image (image.txt).
BUILD_TOOLS = ("pip", "setuptools")
PYTHON_VERSION = "3.11"
ARCHITECTURES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
GLIBC_MINOR = 36  # Debian bookworm's glibc 2.36: the newest manylinux tag both base images can run
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def bundle_commit() -> str:
    """The bundle's git commit, short, with -dirty for uncommitted changes; "nogit" outside a checkout."""
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=BUNDLE_ROOT, capture_output=True, text=True, check=False
    )
    return described.stdout.strip() if described.returncode == 0 else "nogit"


def default_version() -> str:
    """UTC time and the bundle's commit, e.g. 20261123-1701-3f9c2ab (a dirty tree is marked)."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{bundle_commit()}"


def canonical_name(name: str) -> str:
    """A distribution's name as indexes compare it (PEP 503): cos_python_sdk.v5 == cos-python-sdk-v5."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Locked:
    """One requirement of the lock: its name, its `name==version` line and the sha256 hashes pip may accept."""

    name: str
    text: str
    hashes: frozenset[str]


def parse_lock(text: str, source: str = LOCK) -> list[Locked]:
    """The lock's requirements; one line naming the file if one is not pinned with hashes."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        if line[0].isspace():
            if not blocks:
                raise ApplianceError(f"{source}: starts with an indented line: regenerate it (docs/deploy.md)")
            blocks[-1].append(line)
        else:
            blocks.append([line])
    locked = []
    for block in blocks:
        requirement = block[0].rstrip(" \\").split(";")[0].strip()
        name, _, version = requirement.partition("==")
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", " ".join(block)))
        if not _NAME.fullmatch(name.split("[")[0]) or not version or not hashes:
            raise ApplianceError(
                f"{source}: {requirement!r} is not pinned (name==version) with --hash lines: regenerate it "
                "with the command in its header"
            )
        locked.append(Locked(canonical_name(name.split("[")[0]), "\n".join(block) + "\n", hashes))
    return locked


def split_lock(locked: Iterable[Locked]) -> tuple[str, str]:
    """(the image's requirements, the build tools'), as requirement files pip reads with --require-hashes."""
    tools = {canonical_name(name) for name in BUILD_TOOLS}
    image = "".join(item.text for item in locked if item.name not in tools)
    build = "".join(item.text for item in locked if item.name in tools)
    return image, build


def wheel_platforms(platform: str) -> list[str]:
    """The wheel platform tags the image's glibc runs, newest first: the host's platform, never the operator's."""
    arch = ARCHITECTURES[platform]
    oldest = 5 if arch == "x86_64" else 17  # manylinux1 is glibc 2.5; aarch64 wheels start at manylinux2014
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, oldest - 1, -1)]
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    return tags + [f"{name}_{arch}" for name, minor in legacy.items() if minor >= oldest]


def wheelhouse(platform: str) -> Path:
    """The platform's own wheelhouse folder under the bundle, e.g. build/wheelhouse/linux-amd64."""
    return BUNDLE_ROOT / WHEELHOUSE / platform.replace("/", "-")


def download_command(python: str, platform: str, lock: Path, dest: Path) -> list[str]:
    """`pip download` of every locked file for the image's Python and `platform`, hash-checked; the source-only
    packages as sdists (pip allows them with --no-deps, which a complete lock makes safe)."""
    tags = [arg for tag in wheel_platforms(platform) for arg in ("--platform", tag)]
    return [
        python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--require-hashes", "--only-binary=:all:", f"--no-binary={','.join(SOURCE_ONLY)}",
        "--implementation", "cp", "--python-version", PYTHON_VERSION, "--abi", f"cp{PYTHON_VERSION.replace('.', '')}",
        *tags, "--dest", str(dest), "--requirement", str(lock),
    ]  # fmt: skip


def build_command(ref: str, settings: Settings, no_cache: bool = False) -> list[str]:
    """`docker build` of the context tar on stdin, for the host's platform (`no_cache`: every step runs again).
    No release name goes in: the same commit builds the same image (same ID), so a redeploy of it sends and recreates
    nothing; the release's API gets SERVICE_VERSION from its Compose file (compose/api.yml.j2)."""
    images = settings.images
    return [
        "docker", "build", "--quiet", "--force-rm", *(["--no-cache"] if no_cache else []),
        "--platform", images.platform, "--file", DOCKERFILE,
        "--build-arg", f"BASE_IMAGE={images.base_image}",
        "--build-arg", f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}",
        "--tag", ref, "-",
    ]  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prune_wheelhouse(folder: Path, locked: Iterable[Locked]) -> list[Path]:
    """Remove the files no locked hash names (an older lock's); return the ones kept, sorted."""
    wanted = {digest for item in locked for digest in item.hashes}
    kept = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and _sha256(path) in wanted:
            kept.append(path)
        elif path.is_file():
            path.unlink()
    return kept


def context_entries(root: Path, wheels: Iterable[Path], image: str, tools: str) -> Iterator[tuple[str, bytes, bool]]:
    """(name in the context, content, executable) of everything the Dockerfile copies, sorted by name."""
    entries: list[tuple[str, bytes, bool]] = [
        ("wheelhouse/image.txt", image.encode(), False),
        ("wheelhouse/tools.txt", tools.encode(), False),
    ]
    entries += [(f"wheelhouse/{path.name}", path.read_bytes(), False) for path in wheels]
    for path in (root / "service").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            entries.append((path.relative_to(root).as_posix(), path.read_bytes(), bool(path.stat().st_mode & 0o111)))
    yield from sorted(entries)


def context_tar(entries: Iterable[tuple[str, bytes, bool]]) -> bytes:
    """A build context that is the same bytes for the same files: sorted, folders made explicit, every entry
    root-owned at SOURCE_DATE_EPOCH, modes 0644/0755 (never the checkout's umask)."""
    buffer = io.BytesIO()
    folders: set[str] = set()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, executable in entries:
            parts = name.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    tar.addfile(_member(folder, tarfile.DIRTYPE, 0o755, 0))
            mode = 0o755 if executable else 0o644
            tar.addfile(_member(name, tarfile.REGTYPE, mode, len(content)), io.BytesIO(content))
    return buffer.getvalue()


def _member(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, SOURCE_DATE_EPOCH
    return info


def _run(what: str, command: list[str], stdin: bytes | None = None) -> None:
    done = subprocess.run(command, cwd=BUNDLE_ROOT, input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        # pip's reason is its last ERROR line (warnings and details may follow it); docker's is its last line.
        reason = ([line for line in lines if line.startswith("ERROR:")] or lines or [f"exit {done.returncode}"])[-1]
        raise ApplianceError(f"{what} failed: {reason}")


def missing_from_wheelhouse(folder: Path, locked: Iterable[Locked]) -> list[Locked]:
    """The requirements for which `folder` holds no file with one of their locked hashes."""
    present = {_sha256(path) for path in folder.iterdir() if path.is_file()}
    return [item for item in locked if not item.hashes & present]


def download_wheelhouse(python: str, platform: str, lock: Path, folder: Path) -> list[Path]:
    """Every file `lock` names for `platform` in `folder`; the rest removed. pip runs only when a requirement has
    no file there yet: even with every file in place it takes ~5 s (its resolver and hash checks), most of a
    redeploy's build."""
    locked = parse_lock(lock.read_text(), str(lock))
    folder.mkdir(parents=True, exist_ok=True)
    if missing_from_wheelhouse(folder, locked):
        command = download_command(python, platform, lock, folder)
        _run(f"downloading the wheelhouse for {platform} ({lock.name})", command)
    return prune_wheelhouse(folder, locked)


def build_api_image(config: Config, version: str, python: str = sys.executable, no_cache: bool = False) -> str:
    """Build the service image for `version` (the wheelhouse first, with `python`'s pip); return its reference."""
    settings = config.settings
    ref = api_image(settings, version)
    lock = BUNDLE_ROOT / LOCK
    wheels = download_wheelhouse(python, settings.images.platform, lock, wheelhouse(settings.images.platform))
    image, tools = split_lock(parse_lock(lock.read_text()))
    context = context_tar(context_entries(BUNDLE_ROOT, wheels, image, tools))
    _run(f"docker build of {ref}", build_command(ref, settings, no_cache), stdin=context)
    return ref
