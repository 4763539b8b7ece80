"""The team's own front end (`[frontend]`, docs/frontend.md): built or found on the operator's machine, checked, hashed,
and shipped with a release into `releases/<version>/frontend`.

Everything that can fail here fails before the host is touched: a missing `dist`, a failing build (its last lines),
an output without `index.html`. Shipping is one step: the folder's content hash decides whether its tar is sent, or a
kept release's identical copy is reused on the host.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config, Settings
from appliance.errors import ConfigError
from appliance.releases import Release
from appliance.render import site_origin
from appliance.shell import sh
from appliance.steps import Action, Always, Facts, Note, Run, Step, Stream

ENTRY = "index.html"
RUNTIME_CONFIG = "config.json"  # written by the appliance next to the entry page (runtime_config)
# The console's index.html says where it is served (service/web/app.js reads it); moved to /console/ it says so.
CONSOLE_ROOT_META = '<meta name="console-root" content="/">'
WWW_WHY = "the team's front end and the console into the release's web folder"
SITE_STAGING = ".site"  # the release's www assembled beside it, then renamed over it
BUILD_TAIL_LINES = 5  # of a failed build's output, in its one-line error


def mount_path(settings: Settings) -> str:
    """Where the team's front end is served, `/` or `/app/`."""
    return settings.frontend.path


def console_path(settings: Settings) -> str:
    """Where the built-in console is served: `/`, or `/console/` when the team's front end takes `/`."""
    return settings.frontend.console_path


def asset_base(settings: Settings) -> str:
    """The base URL a build puts before its assets (Vite's `base`): the mount path, on the CDN's origin if any."""
    return (settings.frontend.cdn_origin or "") + mount_path(settings)


def api_addresses(config: Config) -> dict[str, str]:
    """The API's and the WebSocket's base URLs as the browser reaches them (the environment's public_url)."""
    origin = site_origin(config)
    return {"apiBaseUrl": origin, "wsUrl": "wss://" + origin.removeprefix("https://") + "/ws"}


def build_env(config: Config) -> dict[str, str]:
    """What a build gets in its environment on top of the operator's: the API addresses and the asset base."""
    addresses = api_addresses(config)
    return {
        "VITE_API_BASE_URL": addresses["apiBaseUrl"],
        "VITE_WS_URL": addresses["wsUrl"],
        "APPLIANCE_ASSET_BASE": asset_base(config.settings),
    }


def runtime_config(config: Config) -> str:
    """`/config.json` (under the mount path): the same addresses for an app that reads them at run time."""
    return json.dumps(api_addresses(config), sort_keys=True) + "\n"


def built_folder(config: Config) -> Path:
    """The front end's built folder on the operator's machine: `dist`, or `build` run in `dir` and its `output`.

    One-line ConfigError naming the field and the file when the folder is missing, the build fails or no index.html."""
    frontend = config.settings.frontend
    where = f"{config.path}: frontend"
    if frontend.dist is not None:
        folder = config.resolve(frontend.dist)
        if not folder.is_dir():
            raise ConfigError(f"{where}.dist: {folder} is not a folder; build the front end or fix the path")
        field = "dist"
    else:
        assert frontend.build is not None and frontend.dir is not None  # the model allows no other custom case
        workdir = config.resolve(frontend.dir)
        if not workdir.is_dir():
            raise ConfigError(f"{where}.dir: {workdir} is not a folder; point it at the front end's source")
        run_build(frontend.build, workdir, build_env(config), where)
        folder = workdir / frontend.output
        field = "output"
    if not (folder / ENTRY).is_file():
        raise ConfigError(f"{where}.{field}: {folder} has no {ENTRY}; it must be the build's output folder")
    return folder


def run_build(command: str, workdir: Path, extra_env: Mapping[str, str], where: str) -> None:
    """The operator's build command, through bash in `workdir`; its last lines in the error when it fails."""
    done = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + command],
        cwd=workdir,
        env={**os.environ, **extra_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = " | ".join(line.strip() for line in done.stdout.strip().splitlines()[-BUILD_TAIL_LINES:])
        raise ConfigError(f"{where}.build: {command!r} failed in {workdir} (exit {done.returncode}): {tail}")


def folder_files(folder: Path) -> list[Path]:
    """The folder's files, sorted, symbolic links left out (a build's output has none worth following)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def tree_hash(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes: the same build gives the same hash wherever it lies."""
    digest = hashlib.sha256()
    for path in folder_files(folder):
        name = path.relative_to(folder).as_posix().encode()
        content = path.read_bytes()
        digest.update(b"%d:%s%d:" % (len(name), name, len(content)))
        digest.update(content)
    return digest.hexdigest()


@dataclass(frozen=True)
class FolderTar:
    """A folder as an uncompressed tar (hashed assets are mostly compressed already), made when it is read."""

    folder: Path

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in folder_files(self.folder))

    def chunks(self) -> Iterator[bytes]:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in folder_files(self.folder):
                info = tar.gettarinfo(str(path), arcname=path.relative_to(self.folder).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with path.open("rb") as content:
                    tar.addfile(info, content)
        yield buffer.getvalue()


def hash_file(release: Release) -> str:
    """The front end's content hash beside it in the release's folder: what a later release compares with."""
    return release.directory + "/frontend.sha256"


def frontend_dir(release: Release) -> str:
    return release.directory + "/frontend"


@dataclass(frozen=True)
class ShipFrontend:
    """The team's front end into `releases/<version>/frontend`: nothing when it is there already, a copy on the host
    when a kept release has the same hash, else its tar over the SSH connection."""

    release: Release
    folder: Path
    digest: str
    name: str = "ship front end"

    def probes(self) -> Mapping[str, str]:
        kept = self.release.settings.paths.releases
        # `FOLDER HASH` per kept release that has a front end
        listing = f'(for f in {sh(kept)}/*/frontend.sha256; do [ -f "$f" ] && echo "${{f%/*}} $(cat "$f")"; done; true)'
        return {"kept": listing}

    def plan(self, facts: Facts) -> list[Action]:
        target = frontend_dir(self.release)
        by_folder = dict(line.split(" ", 1) for line in facts["kept"].stdout.splitlines() if " " in line)
        if by_folder.get(self.release.directory) == self.digest:
            return []
        staged = sh(target + ".next")
        # The hash file is written last, so a half-shipped folder never passes for a whole one.
        record = f"echo {sh(self.digest)} > {sh(hash_file(self.release))}"
        finish = f"rm -rf {sh(target)} && mv -T {staged} {sh(target)} && {record}"
        start = f"rm -f {sh(hash_file(self.release))} && rm -rf {staged} && install -d -m 755 {staged}"
        same = sorted(folder for folder, digest in by_folder.items() if digest == self.digest)
        if same:
            source = sh(same[0] + "/frontend/.")
            return [
                Note(f"unchanged since {same[0].rsplit('/', 1)[-1]}: copied on the host, not sent"),
                Run(f"{start} && cp -a {source} {staged} && {finish}", "the same front end from a kept release"),
            ]
        unpack = f"{start} && tar -x --no-same-owner -C {staged} && {finish}"
        return [Stream(unpack, FolderTar(self.folder), f"front end {self.digest[:12]} from {self.folder}")]


@dataclass(frozen=True)
class Shipped:
    """The team's front end as a deploy ships it: its built folder on the operator's machine and its content hash."""

    folder: Path
    digest: str


def shipped(config: Config) -> Shipped | None:
    """The front end a deploy ships, built and checked before any host is touched; None for the console alone."""
    if not config.settings.frontend.custom:
        return None
    folder = built_folder(config)
    return Shipped(folder, tree_hash(folder))


def assemble_site(config: Config, release: Release) -> str:
    """The release's `www` as nginx serves it: the console (copied out of the API image) and the team's front end at
    their paths, with `config.json`, staged beside it and renamed over it. A rollback publishes it as it is."""
    settings = config.settings
    www = release.directory + "/www"
    site = www + SITE_STAGING
    mount = site + mount_path(settings)
    console = site + console_path(settings)
    moved_meta = CONSOLE_ROOT_META.replace('content="/"', f'content="{console_path(settings)}"')
    rewrite = f"s|{CONSOLE_ROOT_META}|{moved_meta}|"
    return " && ".join(
        [
            f"rm -rf {sh(site)}",
            f"install -d -m 755 {sh(site)}",
            f"cp -a {sh(www + '/.')} {sh(site)}",
            f"install -d -m 755 {sh(mount)} {sh(console)}",
            f"cp -a {sh(frontend_dir(release) + '/.')} {sh(mount)}",
            # The console's page is read from `www`: the team's index.html may just have replaced it in the site.
            f"sed {sh(rewrite)} {sh(www + '/' + ENTRY)} > {sh(console + '.' + ENTRY + '.next')}",
            f"mv -f {sh(console + '.' + ENTRY + '.next')} {sh(console + ENTRY)}",
            f"printf %s {sh(runtime_config(config))} > {sh(mount + RUNTIME_CONFIG)}",
            f"rm -rf {sh(www)}",
            f"mv -T {sh(site)} {sh(www)}",
        ]
    )


def release_steps(config: Config, release: Release, front: Shipped | None) -> tuple[list[Step], list[Step]]:
    """A deploy's front-end steps: (before the console is copied out of the image, after it)."""
    if front is None:
        return [], []
    # Every deploy: the console was just copied out of the image again.
    assemble = Always("assemble front end", assemble_site(config, release), WWW_WHY)
    return [ShipFrontend(release, front.folder, front.digest)], [assemble]
