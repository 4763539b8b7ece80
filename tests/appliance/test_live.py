"""The operator's terminal: step lines while a task runs, on a real pseudo-terminal and through a pipe."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tasks
from appliance.secrets import KNOWN
from tests.conftest import REPO

pytestmark = pytest.mark.unit

# Three steps through the real executor and bash: one quick, one that takes 2 s, one that fails.
DRIVER = """
import sys
from appliance.steps import Always
from appliance.executor import Executor
from appliance.live import step_lines
from tests.appliance.test_executor import LocalHost

with step_lines(verbose="-v" in sys.argv):
    Executor(LocalHost(), redact=lambda text: text.replace("hunter2", "******")).apply_all(
        [Always("quick step", "true # hunter2", "nothing"), Always("slow step", "sleep 2", "wait"),
         Always("last step", "echo broken >&2; false", "fail")]
    )
print("END")
"""
ESCAPE = re.compile(r"\x1b[\[\]()]")
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def driver_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    return {**env, "TERM": "xterm-256color", "PYTHONPATH": str(REPO), **extra}


def run_on_a_terminal(**env: str) -> list[tuple[float, str]]:
    """The driver's output on a pseudo-terminal, as (seconds since start, chunk) in arrival order."""
    leader, follower = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER], stdin=follower, stdout=follower, stderr=follower, env=driver_env(**env)
    )
    os.close(follower)
    chunks: list[tuple[float, str]] = []
    try:
        while time.monotonic() - started < 30:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the terminal closes when the driver exits
                    break
                if not data:
                    break
                chunks.append((time.monotonic() - started, data.decode("utf-8", errors="replace")))
            elif process.poll() is not None:
                break
    finally:
        process.wait(timeout=10)
        os.close(leader)
    return chunks


def first_seen(chunks: list[tuple[float, str]], text: str) -> float:
    seen = ""
    for at, chunk in chunks:
        seen += chunk
        if text in CONTROL.sub("", seen):
            return at
    raise AssertionError(f"{text!r} never appeared in {seen!r}")


def test_on_a_terminal_the_running_step_shows_with_its_time_before_it_ends() -> None:
    chunks = run_on_a_terminal()
    ended = first_seen(chunks, "END")
    # The slow step's live line (spinner, name, elapsed seconds) is on screen while it sleeps its 2 s.
    assert first_seen(chunks, "slow step  1s") < ended - 0.5
    assert first_seen(chunks, "quick step") < first_seen(chunks, "slow step  1s")
    screen = "".join(chunk for _, chunk in chunks)
    assert re.search(r"\x1b\[[0-9;]*32m\s*ok|\x1b\[33mchanged", screen), "statuses in colour"
    assert "broken" in screen and "failed" in screen


def test_no_color_on_a_terminal_keeps_the_live_line_without_colour() -> None:
    chunks = run_on_a_terminal(NO_COLOR="1")
    screen = "".join(chunk for _, chunk in chunks)
    assert first_seen(chunks, "slow step  1s") < first_seen(chunks, "END") - 0.5
    assert not re.search(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;5;[0-9]+)m", screen), "no colour codes"


def test_in_a_pipe_each_step_is_one_plain_line_and_verbose_adds_its_commands_masked() -> None:
    plain = subprocess.run(
        [sys.executable, "-c", DRIVER], capture_output=True, text=True, env=driver_env(), timeout=60, check=True
    )
    assert not ESCAPE.search(plain.stdout), repr(plain.stdout)
    assert [line.split() for line in plain.stdout.splitlines()] == [
        ["changed", "quick", "step", line_time(plain.stdout, 0)],
        ["changed", "slow", "step", line_time(plain.stdout, 1)],
        ["failed", "last", "step", line_time(plain.stdout, 2), "fail:", "broken"],
        ["END"],
    ]
    assert float(line_time(plain.stdout, 1).rstrip("s")) >= 2.0

    verbose = subprocess.run(
        [sys.executable, "-c", DRIVER, "-v"], capture_output=True, text=True, env=driver_env(), timeout=60, check=True
    )
    assert "      run: true # ******\n" in verbose.stdout and "hunter2" not in verbose.stdout
    assert "      run: sleep 2\n  changed  slow step" in verbose.stdout


def line_time(output: str, index: int) -> str:
    return next(word for word in output.splitlines()[index].split() if re.fullmatch(r"[0-9.]+s", word))


def test_dash_h_is_help_on_every_task() -> None:
    for name in tasks.namespace.task_names:
        names = {flag for argument in tasks.namespace[name].get_arguments() for flag in argument.names}
        assert "h" not in names, name
    shown = subprocess.run(
        [str(REPO / ".venv/bin/inv"), "deploy", "-h"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "Usage: inv[oke] [--core-opts] deploy" in shown.stdout and "--host=STRING" in shown.stdout
    assert "-v, --verbose" in shown.stdout
    # A task whose flag has no default: -h is still help, not that flag's value; without the flag, one line.
    helped = subprocess.run([str(REPO / ".venv/bin/inv"), "users.add", "-h"], capture_output=True, text=True, cwd=REPO)
    assert helped.returncode == 0 and "--email=STRING" in helped.stdout, helped.stderr
    bare = subprocess.run([str(REPO / ".venv/bin/inv"), "users.disable"], capture_output=True, text=True, cwd=REPO)
    assert (bare.returncode, bare.stderr) == (
        2,
        "error: missing --email: this task needs a value for it (-h lists its flags)\n",
    )


def inv_in(folder: Path, *words: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`inv WORDS --config folder/appliance.toml` with no secret in the environment but `env`'s."""
    clean = {name: value for name, value in os.environ.items() if name not in KNOWN}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *words, "--config", str(folder / "appliance.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
    )


def test_config_warns_of_the_secret_the_next_deploy_needs_and_render_says_what_it_generated(tmp_path: Path) -> None:
    shutil.copy(REPO / "appliance.example.toml", tmp_path / "appliance.toml")
    checked = inv_in(tmp_path, "config")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[-1] == (
        f"warning: the next inv deploy will refuse to start without AI_API_KEY: set them in {tmp_path / 'secrets.env'} "
        "(mode 0600) or in the environment"
    )
    assert "warning" not in inv_in(tmp_path, "config", AI_API_KEY="sk-test").stdout

    rendered = inv_in(tmp_path, "render", "--out", str(tmp_path / "out"))
    assert rendered.returncode == 0, rendered.stderr
    secrets = (tmp_path / "secrets.env").read_text()
    assert rendered.stdout.splitlines()[0] == (
        f"generated POSTGRES_PASSWORD, REDIS_PASSWORD, JWT_SECRET into {tmp_path / 'secrets.env'} (mode 0600): "
        "keep it, deploys use it"
    )
    assert all(line.split("=", 1)[1] not in rendered.stdout for line in secrets.splitlines())
    again = inv_in(tmp_path, "render", "--out", str(tmp_path / "out"))
    assert "generated" not in again.stdout and (tmp_path / "secrets.env").read_text() == secrets
