"""Deploy benchmarks against a throwaway sandbox CVM: `python -m bench.deploy [--rounds N]`; prints Markdown.

Sets up (not timed): a sandbox, `inv bootstrap`, a first `inv deploy` of a freshly built image (timed on its
own: it ships every image). Then, N rounds of: deploy of an already built image under a new version name
(same layers: tagged on the host, not sent), and `inv rollback` to the previous release. Finally wrk through
nginx + TLS: a static file (nginx alone, the baseline) and GET /api/roles (nginx → API), same run, same
settings. The sandbox is removed at the end.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance import sandbox as sandboxes
from appliance.config import load_config
from appliance.remote import open_host
from bench.run import wrk
from tests.conftest import REPO, free_port


def inv(*args: str) -> float:
    """Seconds an `inv` command took; exits with its output if it failed."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"inv {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="deploy + rollback rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=10, help="wrk duration per target (default 10)")
    options = parser.parse_args()
    name = f"cvmb-{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix=name))
    spec = sandboxes.SandboxSpec(
        name,
        ssh_port=free_port(),
        http_port=free_port(),
        https_port=free_port(),
        state_root=root / "state",
        config_out=root / "sandbox.toml",
    )
    rows: list[tuple[str, str]] = []
    try:
        box = sandboxes.up(spec, log=lambda line: None)
        config = str(box.config_file)
        inv("bootstrap", "--config", config)
        rows.append(
            (
                "first deploy: build the API image, ship every image, migrate, switch",
                f"{inv('deploy', '--version', 'b0', '--config', config):.1f} s",
            )
        )
        deploys, rollbacks = [], []
        for index in range(1, options.rounds + 1):
            deploys.append(
                inv("deploy", "--version", f"b{index}", "--image", "cvm-appliance/api:b0", "--config", config)
            )
            rollbacks.append(inv("rollback", "--config", config))
        rows.append(
            (
                f"deploy of a built image (image on the host), median of {options.rounds}",
                f"{statistics.median(deploys):.1f} s (all: {', '.join(f'{s:.1f}' for s in deploys)})",
            )
        )
        rows.append(
            (
                f"rollback to the previous release, median of {options.rounds}",
                f"{statistics.median(rollbacks):.1f} s (all: {', '.join(f'{s:.1f}' for s in rollbacks)})",
            )
        )
        with open_host(load_config(box.config_file)) as host:
            host.run("printf '{\"ok\":true}' > /opt/appliance/shared/www/static.json")
        base = f"https://127.0.0.1:{box.https_port}"
        static = wrk(f"{base}/static.json", {}, options.seconds)
        api = wrk(f"{base}/api/roles", {}, options.seconds)
        rows.append(("wrk through nginx + TLS: static file (baseline)", static))
        rows.append(("wrk through nginx + TLS: GET /api/roles (API, 2 workers)", api))
    finally:
        sandboxes.down(spec)
    print("| measurement | result |\n|---|---|")
    for what, result in rows:
        print(f"| {what} | {result} |")


if __name__ == "__main__":
    main()
