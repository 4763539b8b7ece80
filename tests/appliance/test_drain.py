"""`inv host.drain`/`undrain` as data: which host a name picks, what each step reads and would run, and the site's
health locations that read the flag (rendered for several hosts only, so one host's files stay as they were)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Config
from appliance.drain import Drain, Undrain, pick_host
from appliance.errors import ConfigError
from appliance.render import release_files
from appliance.secrets import load_secrets
from appliance.steps import Fact, Run
from tests.appliance.several_hosts import with_hosts
from tests.conftest import example_config

pytestmark = pytest.mark.unit

FLAG = "/opt/appliance/shared/nginx/drained"
DRAINED = Fact('{"status":"draining"}\n', 0)
SERVING = Fact('{"status":"ok","version":"v1"}', 0)


@pytest.fixture()
def example(tmp_path: Path) -> Config:
    return example_config(tmp_path)


def site(config: Config) -> str:
    files = release_files(config, load_secrets(config.secrets_path, {}), "v1")
    return next(item.content for item in files if item.path.endswith("/nginx/appliance.conf"))


def test_a_name_picks_one_host_and_anything_else_is_one_line(example: Config) -> None:
    pool = with_hosts(example, "10.0.0.12", "10.0.0.13")
    first = pool.settings.hosts[0]
    assert pick_host(pool, "10.0.0.12").address == "10.0.0.12"
    assert pick_host(pool, f"{first.user}@10.0.0.13:{first.port}").address == "10.0.0.13"
    assert pick_host(pool, first.label) == first
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.99' names none of the environment's hosts: one of .*0\.12"):
        pick_host(pool, "10.0.0.99")


def test_one_host_has_no_drain_and_says_why(example: Config) -> None:
    with pytest.raises(ConfigError, match=r"host.drain needs several \[\[hosts\]\] behind a load balancer"):
        pick_host(example, example.settings.hosts[0].address)
    assert "drain" not in site(example)


def test_drain_marks_the_flag_then_proves_the_site_answers_draining(example: Config) -> None:
    step = Drain(with_hosts(example, "10.0.0.12").settings, "alice@laptop", 1700000000.0)
    assert step.probes()["flag"] == f"test -e {FLAG}"
    assert "https://127.0.0.1/api/health" in step.probes()["health"]
    assert step.plan({"flag": Fact("", 0), "health": DRAINED}) == []
    (run,) = step.plan({"flag": Fact("", 1), "health": SERVING})
    assert isinstance(run, Run)
    assert '"who": "alice@laptop"' in run.command and f"mv -f {FLAG}.next {FLAG}" in run.command
    # A flag that nginx does not answer with (its site rendered without the check) is marked again and proven.
    assert step.plan({"flag": Fact("", 0), "health": SERVING}) != []
    assert f"rm -f {FLAG}; echo 'nginx does not check the drain flag" in run.command


def test_undrain_removes_only_a_flag_that_is_there(example: Config) -> None:
    step = Undrain(with_hosts(example, "10.0.0.12").settings)
    assert step.plan({"flag": Fact("", 1)}) == []
    (run,) = step.plan({"flag": Fact("", 0)})
    assert isinstance(run, Run) and run.command.startswith(f"rm -f {FLAG} && ")


def test_several_hosts_render_the_drain_check_in_both_health_locations(example: Config) -> None:
    pool = with_hosts(example, "10.0.0.12")
    for text in (site(pool), site(pool.on_host(pool.settings.hosts[1]))):  # what a deploy renders for each host
        assert text.count("if (-f /etc/nginx/conf.d/drained) {") == 2
        assert text.count("""return 503 '{"status":"draining"}\\n';""") == 2
        assert "location = /api/health {" in text and "location = /health {" in text
