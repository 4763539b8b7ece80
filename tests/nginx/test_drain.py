"""A drained host's site, served by a real nginx from the files a two-host release renders: /api/health and /health
answer 503 "draining" while the flag is in nginx's folder, a request already in flight finishes, the rest of /api/
still serves, and removing the flag puts the API's own answer back. No reload at any point."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance.config import Config
from appliance.drain import site_answers
from appliance.render import release_files
from appliance.secrets import load_secrets
from tests.appliance.several_hosts import with_hosts
from tests.certificates import issue_chain
from tests.conftest import example_config, free_port
from tests.http_stub import QuietHandler, serving

pytestmark = pytest.mark.integration

SLOW_SECONDS = 2.0


@pytest.fixture()
def api() -> Iterator[int]:
    """The API as nginx reaches it: /api/health answers ok, /api/slow after SLOW_SECONDS."""

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/api/slow":
                time.sleep(SLOW_SECONDS)
            known = self.path in ("/api/health", "/api/slow", "/api/me")
            self.reply(200 if known else 404, b'{"status":"ok"}' if known else b"{}")

    with serving(Handler) as port:
        yield port


@dataclass(frozen=True)
class Served:
    origin: str
    flag: Path
    ca: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.origin, verify=ssl.create_default_context(cadata=self.ca), timeout=10)


@pytest.fixture()
def served(tmp_path: Path, api: int) -> Iterator[Served]:
    """nginx on 127.0.0.1 with the whole site of a two-host release (its listen ports and paths moved under tmp)."""
    config: Config = with_hosts(example_config(tmp_path), "10.0.0.12")
    rendered = release_files(config, load_secrets(config.secrets_path, {}), "v1")
    files = {Path(item.path).name: item.content for item in rendered}
    conf_d, certs, www = tmp_path / "conf.d", tmp_path / "certs", tmp_path / "www"
    for folder in (conf_d, certs, www):
        folder.mkdir()
    chain = issue_chain("127.0.0.1")
    (certs / "fullchain.pem").write_text(chain.bundle)
    (certs / "privkey.pem").write_text(chain.key)
    (conf_d / "upstream.inc").write_text(files["upstream.inc"].replace("api-v1:8000", f"127.0.0.1:{api}"))
    (conf_d / "metrics.htpasswd").write_text(files["metrics.htpasswd"])
    http_port, https_port = free_port(), free_port()
    site = (
        files["appliance.conf"]
        .replace("listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;")
        .replace("listen 443 ssl http2 default_server;", f"listen 127.0.0.1:{https_port} ssl http2 default_server;")
        .replace("/etc/nginx/conf.d/", f"{conf_d}/")
        .replace("/etc/appliance/certs/", f"{certs}/")
        .replace("/var/www/appliance", str(www))
    )
    (conf_d / "appliance.conf").write_text(site)
    temp = "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n" for kind in ("client_body", "proxy"))
    (tmp_path / "nginx.conf").write_text(
        # Workers as root: pytest's folders are private to the user running it (CI: root).
        f"daemon off;\nuser root;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  include /etc/nginx/mime.types;\n  access_log off;\n{temp}"
        f"  include {conf_d}/appliance.conf;\n}}\n"
    )
    nginx = subprocess.Popen(["nginx", "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")])
    origin = f"https://127.0.0.1:{https_port}"
    served = Served(origin, conf_d / "drained", chain.root)
    try:
        deadline = time.monotonic() + 10
        with served.client() as client:
            while True:
                try:
                    client.get("/api/health")
                    break
                except httpx.TransportError:
                    assert nginx.poll() is None and time.monotonic() < deadline, (tmp_path / "error.log").read_text()
                    time.sleep(0.1)
        yield served
    finally:
        nginx.terminate()
        nginx.wait(10)


def test_a_drained_site_fails_its_health_check_and_serves_the_rest(served: Served) -> None:
    with served.client() as client, served.client() as slow, ThreadPoolExecutor(1) as pool:
        assert client.get("/api/health").json() == {"status": "ok"}
        in_flight = pool.submit(slow.get, "/api/slow")
        time.sleep(0.3)  # the slow request is with the API when the host is drained
        served.flag.write_text('{"who": "test"}\n')
        for path in ("/api/health", "/health"):
            answer = client.get(path)
            assert (answer.status_code, answer.json()) == (503, {"status": "draining"}), path
            assert answer.headers["content-type"] == "application/json"
        assert client.get("/api/me").status_code == 200  # requests the CLB already sent still get through
        finished = in_flight.result(timeout=10)
        assert (finished.status_code, finished.json()) == (200, {"status": "ok"})
        served.flag.unlink()
        assert client.get("/api/health").json() == {"status": "ok"}
        assert client.get("/health").status_code == 200


def test_drain_and_undrain_prove_the_answer_they_wait_for(served: Served) -> None:
    """The shell checks host.drain and host.undrain end with, with real curl against this nginx."""
    url = served.origin + "/api/health"

    def check(draining: bool) -> int:
        return subprocess.run(["bash", "-c", site_answers(draining, url)], capture_output=True).returncode

    assert check(draining=False) == 0
    served.flag.write_text("{}\n")
    assert check(draining=True) == 0
    assert check(draining=False) == 1  # ten tries, half a second apart, then it fails
    served.flag.unlink()
    assert check(draining=True) == 1
