"""The operator's terminal against the shared sandbox: step lines while `inv bootstrap --check` runs (recorded in
a tmux pane), plain lines in a pipe, and `inv logs` reading, filtering by time and following the API's log."""

from __future__ import annotations

import json
import os
import pty
import re
import secrets
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config import Config
from appliance.remote import RemoteHost
from tests.conftest import REPO, RUN_ID, as_foreground_job, inv

# The first test may pay for the shared sandbox's bootstrap and deploy (the session fixtures), slow on a busy machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
STEP_LINE = re.compile(r"^\s+(ok|changed|pending|failed)\s+\S.*\s[0-9]+\.[0-9]s\b")
TOTALS = re.compile(r"\d+ ok, \d+ changed, \d+ pending, \d+ failed in ")


def tmux(*words: str) -> str:
    return subprocess.run(["tmux", *words], capture_output=True, text=True, check=True, timeout=30).stdout


def test_a_tmux_pane_shows_step_lines_while_bootstrap_check_runs(config: Config, tmp_path: Path) -> None:
    session = f"{RUN_ID}-terminal"
    done = tmp_path / "done"
    check = shlex.join([sys.executable, "-m", "invoke", "bootstrap", "--check", "--config", str(config.path)])
    command = f"cd {shlex.quote(str(REPO))} && {check}; echo $? > {shlex.quote(str(done))}; sleep 600"
    captures: list[tuple[bool, str]] = []  # (had the run ended?, the pane's text)
    env = {name: value for name, value in os.environ.items() if name not in ("NO_COLOR", "TMUX")}
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "60", command],
        check=True,
        env={**env, "TERM": "xterm-256color"},
        timeout=30,
    )
    try:
        deadline = time.monotonic() + 300
        while not done.exists() and time.monotonic() < deadline:
            captures.append((done.exists(), tmux("capture-pane", "-p", "-t", session)))
            time.sleep(0.2)
        captures.append((True, tmux("capture-pane", "-p", "-S", "-200", "-t", session)))
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], timeout=30, check=False)
    assert done.exists() and done.read_text().strip() == "0", captures[-1][1]
    during = [pane for ended, pane in captures if not ended and not TOTALS.search(pane)]
    with_steps = [pane for pane in during if any(STEP_LINE.match(line) for line in pane.splitlines())]
    assert with_steps, f"no step line before the run ended, in {len(during)} captures; last: {captures[-1][1]}"
    # The running step's own line: a spinner, its name and the seconds so far.
    assert any(re.search(r"^\S\s+\S.*\s\d+s$", line) for pane in during for line in pane.splitlines())
    final = captures[-1][1]
    assert TOTALS.search(final) and "STEP" in final and "STATUS" in final


def test_in_a_pipe_bootstrap_check_prints_one_plain_line_per_step(config: Config) -> None:
    run = inv("bootstrap", "--check", "--config", str(config.path), env={"TERM": "xterm-256color"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "\x1b" not in run.stdout
    lines = run.stdout.splitlines()
    steps = [line.split()[1:-1] for line in lines if STEP_LINE.match(line)]
    header = next(index for index, line in enumerate(lines) if line.split()[:2] == ["STEP", "STATUS"])
    table = [line for line in lines[header + 1 :] if not TOTALS.search(line)]
    assert len(steps) == len(table) > 20
    assert all(" ".join(step) in row for step, row in zip(steps, table, strict=True))


def api_log(host: RemoteHost, level: str, message: str) -> None:
    """A line in the serving API's own log, formatted by the service's JsonFormatter, on its main process's
    standard error (what Docker records)."""
    script = (
        "import logging, sys; from service.logging import JsonFormatter; "
        f"record = logging.LogRecord('e2e', logging.{level}, '', 0, {message!r}, None, None); "
        "open('/proc/1/fd/2', 'w').write(JsonFormatter().format(record) + '\\n')"
    )
    current = host.run("readlink /opt/appliance/current").stdout.strip()
    serving = f"label=com.docker.compose.project.working_dir={current}"
    find = f"docker ps -q --filter label=com.docker.compose.service=api --filter {serving}"
    result = host.run(f"docker exec $({find}) python3 -c {shlex.quote(script)}")
    assert result.exit_code == 0, result.stderr


def test_logs_grep_and_since_return_only_matching_lines_of_the_window(config: Config, host: RemoteHost) -> None:
    token = secrets.token_hex(4)
    api_log(host, "ERROR", f"e2e-before-{token}")
    time.sleep(25)
    api_log(host, "ERROR", f"e2e-within-{token}")
    api_log(host, "INFO", f"e2e-info-{token}")

    window = inv("logs", "--service", "api", "--grep", "ERROR", "--since", "20s", "--config", str(config.path))
    assert window.returncode == 0, window.stderr
    assert f"e2e-within-{token}" in window.stdout and f"e2e-before-{token}" not in window.stdout
    assert window.stdout.strip() and all(" ERROR " in line for line in window.stdout.splitlines()), window.stdout
    wide = inv("logs", "--service", "api", "--grep", "ERROR", "--since", "10m", "--config", str(config.path))
    assert f"e2e-before-{token}" in wide.stdout and f"e2e-within-{token}" in wide.stdout
    assert f"e2e-info-{token}" not in wide.stdout
    (line,) = [line for line in wide.stdout.splitlines() if f"e2e-within-{token}" in line]
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}}Z  ERROR    -  e2e-within-{token}", line), line

    raw = inv("logs", "--json", "--grep", f"e2e-info-{token}", "--since", "10m", "--config", str(config.path))
    (entry,) = [json.loads(line) for line in raw.stdout.splitlines()]
    assert entry["level"] == "info" and entry["msg"] == f"e2e-info-{token}"


def read_until(leader: int, done: Callable[[str], bool], seconds: float) -> str:
    """What the terminal shows until `done(what it showed)` or `seconds` pass, read all along: a program writing
    to a terminal nobody reads blocks once its buffer is full, and could not exit."""
    text, deadline = "", time.monotonic() + seconds
    while not done(text) and time.monotonic() < deadline:
        if select.select([leader], [], [], 0.2)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all it wrote was read
                break
            text += chunk.decode(errors="replace")
    return text


def test_follow_shows_new_lines_and_ctrl_c_ends_it_on_the_host_too(config: Config, host: RemoteHost) -> None:
    token = secrets.token_hex(4)
    leader, follower = pty.openpty()
    words = ["logs", "--follow", "--lines", "1", "--grep", token, "--config", str(config.path)]
    follow = subprocess.Popen(
        [sys.executable, "-m", "invoke", *words],
        cwd=REPO,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT then prints every thread's stack
        # Its main thread was still in follow()'s wait loop 30 s after the SIGINT in CI, which runs in the
        # background with SIGINT ignored: the Ctrl-C never reached Python (this CI run's stacks, #21).
        preexec_fn=as_foreground_job,
    )
    os.close(follower)
    seen = ""
    try:
        # A new line, again until it shows: on a loaded machine the run may take longer than any fixed wait to load
        # and connect, and a line logged before its `docker logs --follow` began is not new to it.
        deadline = time.monotonic() + 90
        while f"e2e-follow-{token}" not in seen and time.monotonic() < deadline:
            api_log(host, "WARNING", f"e2e-follow-{token}")
            seen += read_until(leader, lambda text: f"e2e-follow-{token}" in text, 3)
        assert f"e2e-follow-{token}" in seen, seen
        follow.send_signal(signal.SIGINT)
        # Ended by the Ctrl-C alone, as an interrupt (session 7's CI once saw it still running 30 s later).
        interrupted = time.monotonic()
        seen += read_until(leader, lambda _: follow.poll() is not None, 30)
        # The terminal reads as closed (EIO) a few ms before the exiting process can be waited for: asking poll()
        # at once took an exit under way for one still running (8 of 12 times on a loaded machine).
        try:
            follow.wait(timeout=max(0.0, interrupted + 30 - time.monotonic()))
        except subprocess.TimeoutExpired:
            follow.send_signal(signal.SIGABRT)
            stacks = read_until(leader, lambda _: follow.poll() is not None, 5)
            pytest.fail(f"still running 30 s after the Ctrl-C; its threads:\n{stacks[-6000:]}")
        seen += read_until(leader, lambda _: False, 1)  # what it wrote last
        assert follow.returncode == 130, seen[-500:]
        assert "interrupted" in seen, seen[-500:]
    finally:
        if follow.poll() is None:
            follow.kill()
        os.close(leader)
    # The host's loop notices at its next heartbeat that nobody reads, and takes its docker logs with it.
    deadline = time.monotonic() + 20
    while host.run("pgrep -f 'docker logs --[t]imestamps' || true").stdout.strip() and time.monotonic() < deadline:
        time.sleep(1)
    assert not host.run("pgrep -f 'docker logs --[t]imestamps' || true").stdout.strip()
