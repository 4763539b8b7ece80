"""Deploy benchmarks against a throwaway sandbox CVM: `python -m bench.deploy [--rounds N]`; prints Markdown.

Sets up (not timed): a sandbox, `inv bootstrap`, a first `inv deploy` of a freshly built image (timed on its
own: it ships every image). Then, N rounds of: deploy of an already built image under a new version name
(same layers: tagged on the host, not sent), and `inv rollback` to the previous release. Finally wrk through
nginx + TLS: a static file (nginx alone, the baseline) and GET /api/roles (nginx → API), same run, same
settings. The sandbox is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from appliance import sandbox as sandboxes
from appliance.config import Config, load_config
from appliance.releases import Release
from appliance.remote import open_host
from appliance.warm import warm_unit
from bench.run import wrk
from tests.conftest import REPO, free_port

ROLLBACKS = 5


def inv(*args: str) -> float:
    """Seconds an `inv` command took; exits with its output if it failed."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"inv {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started


def timed_rollback(config: Config, base: str, ca: str, leaving: str) -> tuple[float, float]:
    """`inv rollback`: seconds until the site first answered from another release than `leaving`, and until the
    command returned."""
    switched: list[float] = []
    done = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=base, verify=ssl.create_default_context(cadata=ca), timeout=5) as client:
            while not done.is_set():
                try:
                    answer = client.get("/api/health")
                except httpx.TransportError:  # a keep-alive connection an old nginx worker closed at the reload
                    continue
                if answer.status_code == 200 and answer.json()["version"] != leaving:
                    switched.append(time.monotonic())
                    return
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    started = time.monotonic()
    watcher.start()
    wall = inv("rollback", "--config", str(config.path))
    done.set()
    watcher.join()
    return (switched[0] if switched else float("nan")) - started, wall


def figures(samples: list[float]) -> str:
    return f"{statistics.median(samples):.1f} s (all: {', '.join(f'{s:.1f}' for s in samples)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="deploys of a built image (default 3, at least 2)")
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
        deploys = []
        for index in range(1, options.rounds + 1):
            deploys.append(
                inv("deploy", "--version", f"b{index}", "--image", "cvm-appliance/api:b0", "--config", config)
            )
        rows.append((f"deploy of a built image (image on the host), median of {options.rounds}", figures(deploys)))
        loaded = load_config(box.config_file)
        with open_host(loaded) as host:
            ca = host.run("cat /opt/appliance/shared/certs/ca.pem").stdout
        base = f"https://127.0.0.1:{box.https_port}"
        serving, other = f"b{options.rounds}", f"b{options.rounds - 1}"  # `other` waits in standby
        loads = [os.getloadavg()[0]]  # the machine's, which the sandbox shares: a loaded box shows in every row
        for kind in ("warm", "cold"):
            switched, walls = [], []
            for _ in range(ROLLBACKS):
                if kind == "cold":  # the window's end, as its timer would run it
                    with open_host(loaded) as host:
                        unit = warm_unit(Release(loaded.settings, other))
                        host.run(f"systemctl start {unit}.service")
                traffic, wall = timed_rollback(loaded, base, ca, serving)
                switched.append(traffic)
                walls.append(wall)
                serving, other = other, serving
            rows.append((f"{kind} rollback: the other release serves, median of {ROLLBACKS}", figures(switched)))
            rows.append((f"{kind} rollback: `inv rollback` returns, median of {ROLLBACKS}", figures(walls)))
            loads.append(os.getloadavg()[0])
        rows.append(
            ("load average (1 min) before, between and after the rollbacks", ", ".join(f"{x:.1f}" for x in loads))
        )
        with open_host(loaded) as host:
            host.run("printf '{\"ok\":true}' > /opt/appliance/shared/www/static.json")
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
