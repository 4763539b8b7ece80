"""The one place shell text is made: every word quoted with shlex, commands joined as data."""

from __future__ import annotations

import shlex


def sh(*words: str | int) -> str:
    """A command line with every word quoted: sh("mkdir", "-p", path)."""
    return " ".join(shlex.quote(str(word)) for word in words)


def chain(*commands: str) -> str:
    """Commands that run in turn, stopping at the first failure."""
    return " && ".join(commands)


def pipe(*commands: str) -> str:
    """Commands joined by pipes; the caller's shell must have pipefail for failures to show."""
    return " | ".join(commands)


def as_root(command: str, user: str) -> str:
    """`command` run by bash as root, through non-interactive sudo for anyone but root.

    bash, not the login shell, so that `set -o pipefail` and the same syntax hold on every host.
    """
    script = sh("bash", "-c", f"set -o pipefail; {command}")
    return script if user == "root" else f"sudo -n -- {script}"
