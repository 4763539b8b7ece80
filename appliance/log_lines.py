"""`inv logs`: a service's log on the host, as lines an operator reads (or the raw JSON), filtered.

The host side is `docker logs --timestamps` of the service's container, found by its Compose labels each
time (the API's container is the one of the release `current` points at, so `--follow` moves to the new
API after a deploy or rollback). The operator side turns each line into `time level request-id message
fields`, keeps those matching `--grep`, and masks secret values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from rich.console import Console
from rich.text import Text

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.shell import sh

DEFAULT_LINES = 200
NO_CONTAINER = 44  # the host command's exit status when the service has no container
FOLLOW_POLL_SECONDS = 2
# Lines of the follow loop's own, never shown: a heartbeat (its failed write ends the loop once the operator
# is gone) and the news that the service's container changed.
ALIVE, FOLLOWING = "@alive", "@following"
LEVEL_STYLES = {"DEBUG": "dim", "INFO": "green", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_DOCKER_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z ")
# The service's JSON fields shown in the line's head; the rest follow as key=value.
_HEAD = ("ts", "level", "request_id", "msg", "logger", "exc")


def docker_since(text: str, local: timezone | None = None) -> str:
    """`--since` as `docker logs` takes it: a duration (10m, 2h, 1h30m, 45s, 2d) as seconds before now on the
    host's clock; a time (2026-12-01T10:00, with a zone or in the operator's own `local` zone) as a Unix time."""
    duration = _DURATION.fullmatch(text.strip())
    if duration and any(duration.groups()):
        days, hours, minutes, seconds = (int(part or 0) for part in duration.groups())
        return f"{int(timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds())}s"
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since: {text!r} is neither a duration (10m, 2h, 1h30m) nor a time (2026-12-01T10:00, "
            "2026-12-01 10:00:00+08:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=local) if local else moment.astimezone()
    return f"{moment.timestamp():.9f}"


def logs_command(settings: Settings, service: str, follow: bool, lines: int, since: str | None) -> str:
    """The host command printing the service's log lines, each after Docker's timestamp; with `follow`, a loop
    that keeps printing and moves to the service's new container when a release replaces it."""
    current = sh(settings.paths.current)
    service_label = sh("--filter", f"label=com.docker.compose.service={service}")
    if service == "api":
        # The API of the serving release: Compose labels each container with the folder it was started from.
        labels = f'{service_label} --filter "label=com.docker.compose.project.working_dir=$(readlink {current})"'
    else:
        labels = f"{service_label} {sh('--filter', f'label=com.docker.compose.project={settings.name}')}"
    # Newest first, stopped ones too (a crashed service's log is the one wanted); awk rather than head, which
    # could end docker's write early under pipefail.
    find = f"c=$(docker ps -aq {labels} | awk 'NR == 1')"
    tail = lines or (0 if since else DEFAULT_LINES)  # by default, all of the --since window
    window = [*(["--tail", str(tail)] if tail else []), *(["--since", since] if since else [])]
    first = sh("docker", "logs", "--timestamps", *window)
    missing = f"echo {sh(f'no {service} container on the host: is it deployed and enabled?')}; exit {NO_CONTAINER}"
    if not follow:
        return f'{find}; [ -n "$c" ] || {{ {missing}; }}; {first} "$c" 2>&1'
    # After the first container, a new one is shown from the moment the follow began: its start-up included.
    later = sh("docker", "logs", "--timestamps", "--follow", "--since") + ' "$start"'
    return (
        f"trap '' PIPE; start=$(date +%s); last=; pid=; {find}; [ -n \"$c\" ] || {{ {missing}; }}; "
        f"while :; do {find}; "
        f'if [ -n "$c" ] && [ "$c" != "$last" ]; then [ -z "$pid" ] || kill "$pid" 2>/dev/null; '
        f'if [ -z "$last" ]; then {first} --follow "$c" 2>&1 & '
        f'else echo "{FOLLOWING} $c $(basename "$(readlink {current})")"; {later} --follow "$c" 2>&1 & fi; '
        f'pid=$!; last=$c; fi; echo {ALIVE} || break; sleep {FOLLOW_POLL_SECONDS}; done; kill "$pid" 2>/dev/null'
    )


@dataclass(frozen=True)
class LogLine:
    """One line as the service wrote it, with Docker's time for it."""

    time: str  # "2026-12-01 10:00:00.123Z", or "" for a line of no container's (the loop's, an error)
    body: str


def split_docker_time(line: str) -> LogLine:
    """`2026-12-01T10:00:00.123456789Z BODY` (docker logs --timestamps) into its time (to ms) and body."""
    found = _DOCKER_TIME.match(line)
    if found is None:
        return LogLine("", line)
    milliseconds = (found[2] or ".")[1:4].ljust(3, "0")  # Docker trims a fraction's trailing zeros
    return LogLine(f"{found[1].replace('T', ' ')}.{milliseconds}Z", line[found.end() :])


def readable(line: LogLine) -> Text:
    """`time  LEVEL  request-id  message  key=value...` for the service's JSON lines; other lines after their
    time as they are. A traceback follows on its own lines."""
    try:
        entry = json.loads(line.body)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or "msg" not in entry:
        return Text(f"{line.time}  {line.body}" if line.time else line.body)
    level = str(entry.get("level", "-")).upper()
    when = str(entry.get("ts", line.time)).replace("T", " ")
    text = Text(f"{when}  ")
    text.append(f"{level:<7}", LEVEL_STYLES.get(level, ""))
    text.append(f"  {entry.get('request_id', '-')}  {entry['msg']}")
    extra = "  ".join(f"{key}={value}" for key, value in entry.items() if key not in _HEAD)
    if extra:
        text.append(f"  {extra}", "dim")
    if entry.get("exc"):
        text.append("\n" + "\n".join("    " + row for row in str(entry["exc"]).splitlines()))
    return text


class LogPrinter:
    """A text stream for the SSH output: whole lines, masked, shown readable (or raw) when they match."""

    def __init__(
        self, console: Console, redact: Callable[[str], str], raw: bool = False, grep: str | None = None
    ) -> None:
        self.console, self.redact, self.raw = console, redact, raw
        try:
            self.pattern = re.compile(grep) if grep else None
        except re.error as exc:
            raise ConfigError(f"--grep: {grep!r} is not a regular expression ({exc})") from None
        self._partial = ""

    def write(self, chunk: str) -> int:
        *whole, self._partial = (self._partial + chunk).split("\n")
        for line in whole:
            self.show(line.rstrip("\r"))
        return len(chunk)

    def flush(self) -> None:
        """Nothing: Invoke flushes after every read, and a line is shown whole (see `end`)."""

    def end(self) -> None:
        """Show what is left of a last line without its newline."""
        if self._partial:
            self.show(self._partial)
            self._partial = ""

    def show(self, raw_line: str) -> None:
        if raw_line == ALIVE:
            return
        if raw_line.startswith(FOLLOWING + " "):
            _, container, version = [*raw_line.split(), "", ""][:3]
            self.console.print(Text(f"--- now following container {container[:12]} (release {version})", "cyan"))
            return
        line = split_docker_time(self.redact(raw_line))
        shown = Text(line.body) if self.raw else readable(line)
        if self.pattern is None or self.pattern.search(shown.plain):
            self.console.print(shown)
