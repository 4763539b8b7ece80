"""Releases on a host: where they live, their manifest, which one rollback takes, which ones to prune."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from appliance.config import Settings
from appliance.remote import RemoteHost
from appliance.render import CONTENT_TAG_PREFIX, api_image, release_slug
from appliance.shell import sh
from appliance.steps import Action, Facts, Run


@dataclass(frozen=True)
class Release:
    """Where a release lives on the host (BASE/releases/VERSION) and how its Compose projects are named: the stack's
    infrastructure as NAME, each release's API as NAME-api-SLUG, so two releases' APIs run side by side."""

    settings: Settings
    version: str

    @property
    def slug(self) -> str:
        return release_slug(self.version)

    @property
    def directory(self) -> str:
        return self.settings.paths.release(self.version)

    def project(self, api: bool = False) -> str:
        """The Compose project of the stack's infrastructure or (api=True) of this release's API."""
        return f"{self.settings.name}-api-{self.slug}" if api else self.settings.name

    def compose(self, *words: str, api: bool = False) -> str:
        """A Compose command in this release's folder, for the infrastructure or (api=True) its API."""
        project, file = (self.project(api=True), "api.yml") if api else (self.project(), "docker-compose.yml")
        return compose_in(self.settings, self.directory, project, "--file", file, *words)

    def container(self, service: str, api: bool = False) -> str:
        """The ID of the service's running container (empty when none runs), as a shell expression: a plain
        `docker` call, for the steps where a Compose start (~0.6 s with v1) would show."""
        labels = (
            f"label=com.docker.compose.project={self.project(api)}",
            f"label=com.docker.compose.service={service}",
        )
        return f"$(docker ps -q {sh('--filter', labels[0], '--filter', labels[1])})"


def compose_in(settings: Settings, directory: str, project: str, *words: str) -> str:
    """The host's Compose command (`bin/compose`, v2 or v1) in `directory`, as project `project`: the one place
    a Compose command line is made."""
    return f"cd {sh(directory)} && {sh(settings.paths.compose, '--project-name', project, *words)}"


def current_release(remote: RemoteHost, settings: Settings) -> Release | None:
    """The release `BASE/current` points at; None before the first deploy."""
    found = remote.run(f"readlink {sh(settings.paths.current)}")
    if found.exit_code != 0 or not found.stdout.strip():
        return None
    return Release(settings, found.stdout.strip().rsplit("/", 1)[-1])


def rollback_target(history: list[str], current: str) -> str | None:
    """The release that served before the current one: the last other version in the history."""
    return next((version for version in reversed(history) if version != current), None)


def manifest(
    version: str, images: Mapping[str, str], env_file: bytes, commit: str, who: str, now: datetime | None = None
) -> bytes:
    """A release's manifest.json: image IDs by role, a hash of the API's environment, commit, who, when."""
    when = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    body = {
        "version": version,
        "images": dict(images),
        "env_sha256": hashlib.sha256(env_file).hexdigest(),
        "commit": commit,
        "who": who,
        "at": when,
    }
    return (json.dumps(body, sort_keys=True) + "\n").encode()


def releases_to_prune(on_host: list[str], history: list[str], current: str, keep: int) -> list[str]:
    """Releases beyond the `keep` most recently served ones; never the current one or the rollback target."""
    recency = {version: index for index, version in enumerate(history)}  # last activation wins
    newest_first = sorted(on_host, key=lambda version: recency.get(version, -1), reverse=True)
    protected = {current, rollback_target(history, current)}
    kept = set(newest_first[:keep]) | protected
    return [version for version in newest_first if version not in kept]


@dataclass(frozen=True)
class PruneReleases:
    """Old release folders and their API image tags go; the newest `keep`, the current and the rollback target
    stay. Tags of the API image with no release folder (an interrupted deploy's) go too."""

    settings: Settings
    keep: int

    name = "prune old releases"

    @property
    def repository(self) -> str:
        return api_image(self.settings, "x").rsplit(":", 1)[0]

    def probes(self) -> Mapping[str, str]:
        paths = self.settings.paths
        return {
            "on_host": f"ls -1 {sh(paths.releases)}",
            "history": f"cat {sh(paths.history)}",
            "current": f"readlink {sh(paths.current)}",
            "tags": f"docker images --format '{{{{.Tag}}}} {{{{.ID}}}}' {sh(self.repository)}",
        }

    def plan(self, facts: Facts) -> list[Action]:
        current = facts["current"].stdout.strip().rsplit("/", 1)[-1]
        on_host = facts["on_host"].stdout.split()
        doomed = releases_to_prune(on_host, facts["history"].stdout.split(), current, self.keep)
        kept = (set(on_host) - set(doomed)) | {current}
        tags = [line.split() for line in facts["tags"].stdout.splitlines() if len(line.split()) == 2]
        # A content tag (render.stack_api_image) stays while a kept release's tag names the same image.
        kept_ids = {image_id for tag, image_id in tags if tag in kept}
        stale = [
            tag
            for tag, image_id in tags
            if tag != "<none>" and (image_id not in kept_ids if tag.startswith(CONTENT_TAG_PREFIX) else tag not in kept)
        ]
        if not doomed and not stale:
            return []
        folders = [Release(self.settings, version).directory for version in doomed]
        images = [f"{self.repository}:{tag}" for tag in stale]
        # Removing a tag is best effort: an image a container still uses stays, and layers shared by a kept
        # release stay with it.
        commands = [f"rm -rf {sh(*folders)}"] if folders else []
        commands += [f"{{ docker image rm {sh(*images)} >/dev/null 2>&1 || true; }}"] if images else []
        return [Run(" && ".join(commands), "remove " + " ".join(sorted(set(doomed) | set(stale))))]
