"""/metrics for an external Prometheus: the rendered nginx location and user file, served by a real nginx
in front of a local stand-in for the API; only allowed addresses with the password get through."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from appliance.errors import ConfigError
from tests.conftest import free_port
from tests.http_stub import QuietHandler, serving
from tests.monitoring.conftest import example_config, rendered_release

PASSWORD = "scrape-me-4f1c2a9e"


def render_with(tmp_path: Path, allow: str, secrets: str = f"METRICS_PASSWORD={PASSWORD}\n") -> Path:
    extra = f"\n[environments.production.monitoring]\nmetrics_allow_from = [{allow}]\n"
    config = example_config(tmp_path, extra_toml=extra, secrets=secrets)
    return rendered_release(config, tmp_path / "out", reveal=True)


@pytest.fixture()
def api() -> Iterator[int]:
    """What the API answers at /metrics, on 127.0.0.1."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            found = self.path == "/metrics"
            self.reply(200 if found else 404, b"cvm_agents_running 3\n" if found else b"not here\n", "text/plain")

    with serving(Handler) as port:
        yield port


@contextmanager
def serve(release: Path, api_port: int, workdir: Path) -> Iterator[str]:
    """nginx with the release's /metrics location (cut from its appliance.conf) and its user file; its URL."""
    site = (release / "nginx" / "appliance.conf").read_text()
    location = re.search(r"\n    location = /metrics \{.*?\n    \}\n", site, re.DOTALL)
    assert location, "no /metrics location in the rendered site"
    conf_d = workdir / "conf.d"
    conf_d.mkdir()
    shutil.copy(release / "nginx" / "metrics.htpasswd", conf_d / "metrics.htpasswd")
    port = free_port()
    block = location.group(0).replace("/etc/nginx/conf.d/", f"{conf_d}/")
    (workdir / "nginx.conf").write_text(
        # Workers as root: pytest's folders are private to the user running it (CI: root).
        f"daemon off;\nuser root;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {workdir};\n"
        f"  upstream appliance_api {{ server 127.0.0.1:{api_port}; }}\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n{block}  }}\n}}\n"
    )
    nginx = subprocess.Popen(["nginx", "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "error.log")])
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert nginx.poll() is None and time.monotonic() < deadline, (workdir / "error.log").read_text()
                time.sleep(0.1)
        yield url
    finally:
        nginx.terminate()
        nginx.wait(10)


@pytest.mark.integration
def test_allowed_address_with_the_password_gets_metrics(tmp_path: Path, api: int) -> None:
    release = render_with(tmp_path, '"127.0.0.1/32", "10.0.0.0/8"')
    with serve(release, api, tmp_path) as url:
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, auth=("metrics", "wrong-password")).status_code == 401
        answer = httpx.get(url, auth=("metrics", PASSWORD))
        assert answer.status_code == 200
        assert answer.text == "cvm_agents_running 3\n"


@pytest.mark.integration
def test_other_addresses_are_refused_even_with_the_password(tmp_path: Path, api: int) -> None:
    release = render_with(tmp_path, '"203.0.113.7/32"')
    with serve(release, api, tmp_path) as url:
        assert httpx.get(url, auth=("metrics", PASSWORD)).status_code == 403


@pytest.mark.unit
def test_metrics_stay_unserved_by_default_and_need_a_password_when_allowed(tmp_path: Path) -> None:
    release = rendered_release(example_config(tmp_path / "default"), tmp_path / "default" / "out")
    assert "/metrics" not in (release / "nginx" / "appliance.conf").read_text()
    assert (release / "nginx" / "metrics.htpasswd").read_text().startswith("#")
    with pytest.raises(ConfigError, match="metrics_allow_from needs the METRICS_PASSWORD secret"):
        render_with(tmp_path / "nopass", '"127.0.0.1/32"', secrets="")
    masked = rendered_release(
        example_config(
            tmp_path / "masked",
            extra_toml='\n[environments.production.monitoring]\nmetrics_allow_from = ["127.0.0.1"]\n',
            secrets=f"METRICS_PASSWORD={PASSWORD}\n",
        ),
        tmp_path / "masked" / "out",
    )
    assert (masked / "nginx" / "metrics.htpasswd").read_text() == "metrics:******\n"
