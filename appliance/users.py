"""`inv users.*`: the service's accounts, managed over SSH. Each task runs `python3 -m service.users` in the
current release's API container (`compose exec`), with the API's own environment, so the operator needs no
database access. Commands are built here as values; a password travels on the command's standard input,
never in its words (no process list, shell history or log sees it).
"""

from __future__ import annotations

import getpass
from typing import TextIO

from appliance.config import Config
from appliance.errors import StepFailed
from appliance.releases import Release, current_release
from appliance.remote import CommandResult, open_host


def users_command(release: Release, *words: str) -> str:
    """`python3 -m service.users WORDS` inside the release's running API container."""
    return release.compose("exec", "-T", "api", "python3", "-m", "service.users", *words, api=True)


def add_words(email: str, admin: bool) -> tuple[str, ...]:
    return ("add", email, "--admin") if admin else ("add", email)


def invite_words(days: int, note: str) -> tuple[str, ...]:
    return ("invite", "--days", str(days), "--note", note)


def read_password(stdin: TextIO) -> str:
    """The new account's password: asked twice at a terminal, else the first line of standard input (a script)."""
    if not stdin.isatty():
        password = stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password for the new account: ")
        if getpass.getpass("again: ") != password:
            raise StepFailed("the two passwords differ: nothing was changed")
    if not password:
        raise StepFailed("no password given (type one, or pipe it on standard input): nothing was changed")
    return password


def failure(target: str, words: tuple[str, ...], result: CommandResult) -> str:
    """One line for a refused command: the service's own `error: …` line when it gave one."""
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    said = next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")), None)
    if said is None:
        said = f"exit {result.exit_code}: {lines[-1] if lines else 'no output'} (is the API running? inv status)"
    return f"{target}: users {words[0]}: {said}"


def run_users(config: Config, *words: str, password: str | None = None) -> str:
    """Run a `service.users` command on the host; its output, or StepFailed with its one-line reason."""
    target = config.settings.hosts[0].target
    with open_host(config) as remote:
        release = current_release(remote, config.settings)
        if release is None:
            raise StepFailed(f"{target}: nothing deployed yet: run inv deploy")
        command = users_command(release, *words)
        if password is None:
            result = remote.run(command, timeout=120)
        else:
            result = remote.stream(command, [f"{password}\n".encode()], lambda _sent: None)
    if result.exit_code != 0:
        raise StepFailed(failure(target, words, result))
    return result.stdout.rstrip()
