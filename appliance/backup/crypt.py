"""age encryption through the `age` program: to the configured recipient on the host; decryption only
with an identity handed in by the operator through a pipe (it is never written to the host's disk)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from appliance.backup.errors import BackupError


def _run(command: list[str], what: str, pass_fds: tuple[int, ...] = ()) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, pass_fds=pass_fds)
    except FileNotFoundError:
        raise BackupError("the age program is missing: run inv bootstrap (it installs the age package)") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        # age ends with a line asking for bug reports; the reason is its "age: error: …" line.
        reason = next((line for line in lines if "error:" in line), lines[-1])
        raise BackupError(f"{what} failed: {reason}")


def encrypt(source: Path, target: Path, recipient: str) -> None:
    _run(
        ["age", "--encrypt", "--recipient", recipient, "--output", str(target), str(source)],
        f"encrypting {source.name}",
    )


def decrypt(source: Path, target: Path, identity: str) -> None:
    """Decrypt with `identity` (an AGE-SECRET-KEY-… text), fed to age through a pipe."""
    reader, writer = os.pipe()
    try:
        os.write(writer, identity.encode())  # a key is far below the pipe's buffer
        os.close(writer)
        writer = -1
        command = ["age", "--decrypt", "--identity", f"/dev/fd/{reader}", "--output", str(target), str(source)]
        _run(command, f"decrypting {source.name}", pass_fds=(reader,))
    finally:
        os.close(reader)
        if writer != -1:
            os.close(writer)
