"""One Prometheus for several app hosts: the first configured host's scrapes the others' API and node exporter through
their nginx on the VPC (its address and METRICS_PASSWORD only), and the others run no Prometheus of their own. One
host's files are the goldens' (tests/appliance/test_render_golden.py), unchanged."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.config import Config, load_config
from appliance.errors import ConfigError
from appliance.render import api_image, release_files, stack_images, write_tree
from appliance.secrets import load_secrets
from tests.appliance import nginx_site
from tests.appliance.several_hosts import with_hosts
from tests.conftest import example_config

pytestmark = pytest.mark.unit

PASSWORD = "scrape-me-7d1e"


@pytest.fixture()
def pool(tmp_path: Path) -> Config:
    """The example's production (domain, ACME) with two more hosts, every one with a VPC address 10.0.0.1x."""
    return with_hosts(
        example_config(tmp_path), "203.0.113.12", "203.0.113.13", vpc="10.0.0.", metrics_password=PASSWORD
    )


def rendered(config: Config, folder: Path, reveal: bool = True) -> Path:
    """The release's files written under `folder`; its release folder."""
    write_tree(release_files(config, load_secrets(config.secrets_path, {}), "v1", reveal=reveal), folder)
    return folder / "opt/appliance/releases/v1"


def test_the_first_host_scrapes_the_others_on_their_vpc_address(pool: Config, tmp_path: Path) -> None:
    release = rendered(pool, tmp_path / "first")
    prometheus = yaml.safe_load((release / "monitoring/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert set(jobs) == {
        "api", "node", "prometheus", "alertmanager",
        "api@203.0.113.12", "node@203.0.113.12", "api@203.0.113.13", "node@203.0.113.13",
    }  # fmt: skip
    peer = jobs["node@203.0.113.12"]
    assert peer["static_configs"] == [{"targets": ["10.0.0.12:443"], "labels": {"host": "203.0.113.12"}}]
    assert (peer["scheme"], peer["metrics_path"]) == ("https", "/metrics/node")
    assert peer["basic_auth"] == {"username": "metrics", "password": PASSWORD}
    assert peer["tls_config"] == {"server_name": "agents.example.com"}  # ACME: a public CA, the domain's certificate
    assert peer["relabel_configs"] == [{"target_label": "job", "replacement": "node"}]  # the rules' job
    assert jobs["api"]["static_configs"][0]["labels"] == {"release": "v1", "host": "203.0.113.10"}
    stack = yaml.safe_load((release / "docker-compose.yml").read_text())["services"]
    assert {"prometheus", "alertmanager", "relay", "node-exporter"} <= set(stack)
    site = (release / "nginx/appliance.conf").read_text()
    assert "location = /metrics" not in site  # nobody scrapes the monitoring host from outside
    promtool = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(release / "monitoring/prometheus.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr


def test_another_host_runs_no_prometheus_and_lets_only_the_first_read_its_metrics(pool: Config, tmp_path: Path) -> None:
    second = pool.on_host(pool.configured_hosts[1])
    release = rendered(second, tmp_path / "second")
    stack = yaml.safe_load((release / "docker-compose.yml").read_text())
    assert {"prometheus", "alertmanager", "relay"}.isdisjoint(stack["services"]) and "node-exporter" in stack[
        "services"
    ]
    assert "prometheusdata" not in stack["volumes"]
    site = (release / "nginx/appliance.conf").read_text()
    for location in ("location = /metrics {", "location = /metrics/node {"):
        block = site.split(location, 1)[1].split("\n    }\n", 1)[0]
        assert "allow 10.0.0.11;\n        deny all;" in block and "auth_basic_user_file" in block, block
    assert (release / "nginx/metrics.htpasswd").read_text().startswith("metrics:{SSHA}")
    check = subprocess.run(
        ["docker-compose", "--project-name", "agents", "--file", "docker-compose.yml", "config", "--quiet"],
        cwd=release, capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert_nginx_accepts(release, tmp_path)


def test_each_host_is_sent_the_images_its_stack_runs_and_no_other(pool: Config, tmp_path: Path) -> None:
    """What a deploy sends a host (stack_images, the release's API image besides) is what its Compose file runs: the
    first host's Prometheus and Alertmanager stay off the others, which get only the node exporter."""
    api = api_image(pool.settings, "v1")  # the API's, the relay's and the LLM stand-in's
    for host in pool.configured_hosts:
        config = pool.on_host(host)
        stack = yaml.safe_load((rendered(config, tmp_path / host.label) / "docker-compose.yml").read_text())
        runs = {service["image"] for service in stack["services"].values()} - {api}
        assert set(stack_images(config).values()) == runs, host.label
    images = pool.settings.images
    second = stack_images(pool.on_host(pool.configured_hosts[1]))
    assert second["node-exporter"] == images.node_exporter
    assert {images.prometheus, images.alertmanager}.isdisjoint(second.values()), second


def assert_nginx_accepts(release: Path, folder: Path) -> None:
    """Debian's nginx takes the site (the node exporter's name is looked up only when asked)."""
    shutil.copy(release / "nginx/metrics.htpasswd", folder / "metrics.htpasswd")
    site, upstream = ((release / "nginx" / name).read_text() for name in ("appliance.conf", "upstream.inc"))
    nginx_site.assert_nginx_accepts(folder, site, upstream, "agents.example.com")


def test_a_self_signed_pool_checks_the_others_against_the_private_ca(pool: Config, tmp_path: Path) -> None:
    text = pool.path.read_text().replace('tls = { mode = "acme", acme_email = "ops@example.com" }', "", 1)
    pool.path.write_text(text.replace('domain = "agents.example.com"\n', "", 1))
    release = rendered(load_config(pool.path, pool.env), tmp_path / "self-signed")
    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load((release / "monitoring/prometheus.yml").read_text())["scrape_configs"]
    }
    # Each host's own certificate names its address (no domain): what the scrape checks, on the VPC address.
    assert jobs["api@203.0.113.13"]["tls_config"] == {
        "ca_file": "/etc/appliance/site-ca.pem",
        "server_name": "203.0.113.13",
    }
    prometheus = yaml.safe_load((release / "docker-compose.yml").read_text())["services"]["prometheus"]
    assert "/opt/appliance/shared/certs/ca.pem:/etc/appliance/site-ca.pem:ro" in prometheus["volumes"]


def test_several_hosts_without_the_metrics_password_is_one_line(pool: Config) -> None:
    pool.secrets_path.write_text(pool.secrets_path.read_text().replace(f"METRICS_PASSWORD={PASSWORD}\n", ""))
    with pytest.raises(
        ConfigError, match=r"monitoring with several \[\[hosts\]\] .* needs the METRICS_PASSWORD secret"
    ):
        release_files(pool, load_secrets(pool.secrets_path, {}), "v1", reveal=True)
