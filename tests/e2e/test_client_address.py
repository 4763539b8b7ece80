"""The API sees each client's own address through nginx: one client that uses up its login allowance does not
lock anybody else out (it did: every client shared nginx's address, and so one counter)."""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

import pytest

from appliance.config import load_config
from appliance.remote import open_host
from appliance.render import api_image
from appliance.shell import sh
from tests.conftest import RUN_ID, Deployed
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e

# Runs inside the sandbox, in a container of its own on the stack's egress network: a client with its own
# address. It logs in (or keeps failing to) through nginx, prints its address and what it met as JSON, then
# stays `linger` seconds: while it runs, no other container can be given its address.
CLIENT = textwrap.dedent(
    """
    import json, socket, ssl, sys, time, urllib.error, urllib.request
    email, password, until_limited, linger = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    context = ssl._create_unverified_context()  # the client's own trust is not what is tested here
    def login(address, secret):
        body = json.dumps({"email": address, "password": secret}).encode()
        request = urllib.request.Request("https://nginx/api/auth/login", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as answer:
                return answer.status, "api"
        except urllib.error.HTTPError as failed:
            return failed.code, "nginx" if b"nginx" in failed.read() else "api"
    seen = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        status, source = login(f"n{len(seen)}-{email}" if until_limited else email, password)
        seen.append([status, source])
        if not until_limited or (status == 429 and source == "api"):
            break
        time.sleep(1 if source == "nginx" else 0.2)
    print(json.dumps({"address": socket.gethostbyname(socket.gethostname()), "seen": seen}), flush=True)
    time.sleep(linger)
    """
)


def client_command(image: str, network: str, email: str, password: str, until_limited: bool, linger: int) -> list[str]:
    return [
        "--network", network, "--entrypoint", "python3", image,
        "-c", CLIENT, email, password, "1" if until_limited else "0", str(linger),
    ]  # fmt: skip


def report(output: str) -> dict[str, Any]:
    return dict(json.loads(output.strip().splitlines()[-1]))


def test_one_client_using_up_its_login_allowance_does_not_lock_out_another(deployed: Deployed, site: Site) -> None:
    config = load_config(deployed.sandbox.config_file)
    settings = config.settings
    email, password = site.register()
    greedy_name = f"{RUN_ID}-greedy-client"
    with open_host(config) as host:
        version = host.run(f"readlink {settings.base_dir}/current").stdout.strip().rsplit("/", 1)[-1]
        image, network = api_image(settings, version), f"{settings.name}_egress"
        greedy_args = client_command(image, network, "nobody@example.test", "wrong-password-1", True, 300)
        started = host.run(sh("docker", "run", "-d", "--name", greedy_name, *greedy_args))
        assert started.exit_code == 0, started.stderr
        try:
            deadline = time.monotonic() + 200
            while not (logs := host.run(sh("docker", "logs", greedy_name)).stdout).strip():
                assert time.monotonic() < deadline, "the greedy client printed nothing within 200 s"
                time.sleep(2)
            greedy = report(logs)
            other_args = client_command(image, network, email, password, False, 0)
            ran = host.run(sh("docker", "run", "--rm", *other_args), timeout=200)
            assert ran.exit_code == 0, ran.stderr
            other = report(ran.stdout)
        finally:
            host.run(sh("docker", "rm", "-f", greedy_name))
    assert greedy["seen"][-1] == [429, "api"], greedy  # the API's own per-address limit, reached by this client
    assert sum(source == "api" for _, source in greedy["seen"]) > 30  # past nginx's limit to the API's
    assert other["address"] != greedy["address"]
    assert other["seen"] == [[200, "api"]]
