"""Image transfer over a thin link: `python -m bench.transfer [--rate 16mbit]`; prints Markdown (bench/README.md).

For each transport, today's whole-image path (`images.transport = "archive"`: one `docker save` stream) and the
layer path (`"ssh"`, the default), one sandbox after the other (never two at once): bootstrap (not timed), then
the link to the sandbox is throttled both ways and four deploys are timed, whole `inv deploy` commands, the
build included: (d) the first deploy onto the fresh host, (a) a redeploy of the same commit, (b) a one-line
change in service/, (c) a dependency bump in the lock (annotated-types to another version, from a copy of the
bundle). Bytes are what crossed the link towards the host (the VM's end of the sandbox's veth), so both paths
are counted alike, SSH overhead included.

Throttling: the issue's `tc qdisc add dev eth0 root tbf ...` inside the sandbox shapes only what the host sends;
a deploy's bytes flow the other way, so the same tbf also goes on the VM's end of the sandbox's veth.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

from appliance import sandbox as sandboxes
from tests.conftest import REPO, free_port

BUMP = ("annotated-types", "0.8.0", "0.7.0")  # (package, locked version, the version the bench moves it to)
CASES = (
    ("d", "first deploy onto a fresh host"),
    ("a", "redeploy of the same commit"),
    ("b", "one-line change in service/"),
    ("c", "dependency bump in the lock"),
)


def run(command: list[str], cwd: Path = REPO) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def veth_of(name: str) -> str:
    """The VM's end of the sandbox container's network interface."""
    container = docker.from_env().containers.get(name)
    index = container.exec_run(["cat", "/sys/class/net/eth0/iflink"]).output.decode().strip()
    links = run(["ip", "-o", "link"])
    return next(line.split(": ")[1].split("@")[0] for line in links.splitlines() if line.split(": ")[0] == index)


def throttle(name: str, rate: str) -> None:
    shape = ["root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
    run(["tc", "qdisc", "add", "dev", veth_of(name), *shape])
    run(["docker", "exec", name, "tc", "qdisc", "add", "dev", "eth0", *shape])


def sent_towards(name: str) -> int:
    """Bytes the VM has sent to the sandbox so far."""
    return int(Path(f"/sys/class/net/{veth_of(name)}/statistics/tx_bytes").read_text())


def bundle_copy(root: Path, case: str) -> Path:
    """A copy of the bundle with (b) one line of service/ changed, or (c) a dependency moved to another version."""
    tree = root / f"bundle-{case}"
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".*_cache", "artifacts", "node_modules")
    shutil.copytree(REPO, tree, ignore=ignore, symlinks=True)
    health = tree / "service/api/routes/health.py"
    line = '        "version": SERVICE_VERSION,\n'
    health.write_text(health.read_text().replace(line, line + f'        "edition": "bench-{case}",\n'))
    if case == "c":
        package, locked, wanted = BUMP
        wheels = root / "bump"
        run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels), f"{package}=={wanted}"]
        )
        digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(wheels.iterdir())]
        lock = tree / "service/requirements.lock"
        pinned = rf"^{re.escape(package)}=={re.escape(locked)} \\\n"
        block = re.compile(pinned + r"(    --hash=sha256:[0-9a-f]+( \\)?\n)+", re.M)
        hashes = " \\\n".join(f"    --hash=sha256:{digest}" for digest in digests)
        text, count = block.subn(f"{package}=={wanted} \\\n{hashes}\n", lock.read_text())
        assert count == 1, f"{package}=={locked} is no longer in the lock: change BUMP"
        lock.write_text(text)
    return tree


def measure(transport: str, rate: str, root: Path) -> dict[str, tuple[float, float, str]]:
    """{case: (seconds, MB towards the host, the images row)} for one transport, on a sandbox of its own."""
    name = f"cvmt-{transport}-{secrets.token_hex(2)}"
    spec = sandboxes.SandboxSpec(
        name,
        ssh_port=free_port(),
        http_port=free_port(),
        https_port=free_port(),
        state_root=root / name / "state",
        config_out=root / name / "sandbox.toml",
    )
    figures: dict[str, tuple[float, float, str]] = {}
    try:
        box = sandboxes.up(spec, log=lambda line: None)
        config = box.config_file
        text = config.read_text()
        config.write_text(text.replace('transport = "archive"\n', f'transport = "{transport}"\n', 1))
        assert f'transport = "{transport}"' in config.read_text(), "the sandbox config names no transport"
        run([sys.executable, "-m", "invoke", "bootstrap", "--config", str(config)])
        throttle(name, rate)
        trees = {"d": REPO, "a": REPO, "b": bundle_copy(root / name, "b"), "c": bundle_copy(root / name, "c")}
        for case, _ in CASES:
            before, started = sent_towards(name), time.monotonic()
            deploy = [sys.executable, "-m", "invoke", "deploy", "--version", f"{case}1", "--config", str(config)]
            output = run(deploy, cwd=trees[case])
            seconds, sent = time.monotonic() - started, (sent_towards(name) - before) / 1e6
            row = next((line.strip() for line in output.splitlines() if line.strip().startswith("images ")), "")
            figures[case] = (seconds, sent, re.sub(r"\s+", " ", row))
    finally:
        sandboxes.down(spec)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="16mbit", help="the link's rate, as tc writes it (default 16mbit)")
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    results = {transport: measure(transport, options.rate, root) for transport in ("archive", "ssh")}
    print(f"| case ({options.rate}) | whole images (archive) | layers (ssh) |\n|---|---|---|")
    for case, what in CASES:
        cells = [f"{results[t][case][1]:.1f} MB, {results[t][case][0]:.0f} s" for t in ("archive", "ssh")]
        print(f"| ({case}) {what} | {cells[0]} | {cells[1]} |")
    print()
    for transport in ("archive", "ssh"):
        for case, _ in CASES:
            print(f"- {transport} ({case}): {results[transport][case][2]}")


if __name__ == "__main__":
    main()
