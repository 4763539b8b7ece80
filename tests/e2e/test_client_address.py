"""The API sees each client's own address through nginx: one client that uses up its login allowance does not
lock anybody else out (it did: every client shared nginx's address, and so one counter)."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from appliance.config import load_config
from appliance.remote import RemoteHost, open_host
from appliance.render import api_image
from appliance.shell import sh
from tests.conftest import Deployed
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e

# Runs inside the sandbox, in a container of its own on the stack's egress network: a client with its own
# address. It logs in (or keeps failing to) through nginx and prints what it met as JSON.
CLIENT = textwrap.dedent(
    """
    import json, ssl, sys, time, urllib.error, urllib.request
    email, password, until_limited = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
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
    print(json.dumps(seen))
    """
)


def client(
    host: RemoteHost, image: str, network: str, email: str, password: str, until_limited: bool
) -> list[list[Any]]:
    command = sh(
        "docker", "run", "--rm", "--network", network, "--entrypoint", "python3", image,
        "-c", CLIENT, email, password, "1" if until_limited else "0",
    )  # fmt: skip
    ran = host.run(command, timeout=200)
    assert ran.exit_code == 0, ran.stderr
    return list(json.loads(ran.stdout.strip().splitlines()[-1]))


def test_one_client_using_up_its_login_allowance_does_not_lock_out_another(deployed: Deployed, site: Site) -> None:
    config = load_config(deployed.sandbox.config_file)
    settings = config.settings
    email, password = site.register()
    with open_host(config) as host:
        version = host.run(f"readlink {settings.base_dir}/current").stdout.strip().rsplit("/", 1)[-1]
        image, network = api_image(settings, version), f"{settings.name}_egress"
        greedy = client(host, image, network, "nobody@example.test", "wrong-password-1", until_limited=True)
        assert greedy[-1] == [429, "api"], greedy  # the API's own per-address limit, reached by this client
        assert sum(source == "api" for _, source in greedy) > 30  # it got past nginx's limit to the API's
        other = client(host, image, network, email, password, until_limited=False)
    assert other == [[200, "api"]]
