"""The team's own Vue 3 + Vite front end through `inv deploy` and `inv rollback` on the shared sandbox (#22).

It runs on the shared deployed sandbox (no sandbox of its own: CI's time budget) and puts back the release that
served before it when it ends, so the console is at `/` again for the modules after it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from appliance.remote import RemoteHost
from tests.conftest import REPO, Deployed, inv
from tests.e2e.test_console import OpenBrowser, open_browser, visible, wait_for  # noqa: F401 - open_browser: a fixture
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e
FIXTURE = REPO / "tests/fixtures/vue-app"
IMMUTABLE = "public, max-age=31536000, immutable"
FIRST, SECOND = "v61", "v62"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fixture app, whose components the tests change."""
    folder = tmp_path_factory.mktemp("frontend") / "ui"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("node_modules", "dist"))
    return folder


@pytest.fixture(scope="module")
def front_config(deployed: Deployed, ui: Path, host: RemoteHost) -> Iterator[Path]:
    """The shared sandbox's config with `[frontend]` building the app; afterwards the release that served before is
    rolled back to (the console at `/` again)."""
    original = deployed.sandbox.config_file
    before = host.run("readlink /opt/appliance/current").stdout.strip().rsplit("/", 1)[-1]
    path = original.parent / "frontend.toml"
    frontend = f'\n[frontend]\nbuild = "npm ci --no-audit --no-fund && npm run build"\ndir = "{ui}"\n'
    path.write_text(original.read_text() + frontend)
    yield path
    back = inv("rollback", "--to", before, "--config", str(original))
    assert back.returncode == 0, back.stdout + back.stderr


def deploy(config: Path, version: str) -> str:
    run = inv("deploy", "--version", version, "--image", "cvm-appliance/api:v1", "--config", str(config), timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def assets(site: Site, path: str = "/") -> set[str]:
    """The hashed assets the entry page served at `path` names."""
    with site.client() as client:
        return set(re.findall(r'"/assets/([^"]+)"', client.get(path).text))


def title_after_reload(browser: WebDriver, site: Site) -> tuple[str, str]:
    """Open /about by its link, reload it (nginx answers the route with index.html), read what the page shows."""
    browser.get(site.origin + "/")
    wait_for(browser, visible("a[href='/about']"))
    browser.find_element(By.CSS_SELECTOR, "a[href='/about']").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "title").text == "About")
    browser.refresh()
    wait_for(browser, lambda b: b.current_url.endswith("/about") and b.find_element(By.ID, "title").text == "About")
    return browser.find_element(By.ID, "title").text, browser.find_element(By.ID, "version").text


@pytest.fixture(scope="module")
def browser(open_browser: OpenBrowser) -> WebDriver:  # noqa: F811 - the console e2e's fixture, imported above
    return open_browser("en-US")


def test_deploy_builds_ships_and_serves_the_app_with_the_injected_api_address(
    front_config: Path, site: Site, browser: WebDriver, host: RemoteHost
) -> None:
    out = deploy(front_config, FIRST)
    assert "ship front end" in out
    with site.client() as client:
        health = client.get("/api/health").json()["status"]
    browser.get(site.origin + "/")
    wait_for(browser, lambda b: b.find_element(By.ID, "health").text == health)
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    # The base URL came from the build's VITE_API_BASE_URL (the environment's public_url), not from config.json.
    assert f"{site.origin}/api/health" in fetched
    assert not any(name.endswith("/config.json") for name in fetched)
    assert title_after_reload(browser, site) == ("About", "version one")
    digest = host.run(f"cat /opt/appliance/releases/{FIRST}/frontend.sha256").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_hashed_assets_are_immutable_and_the_entry_page_is_revalidated(front_config: Path, site: Site) -> None:
    names = assets(site)
    assert names and all(re.search(r"-[A-Za-z0-9_-]{8}\.(js|css)$", name) for name in names)
    with site.client() as client:
        for name in names:
            answer = client.get(f"/assets/{name}")
            assert answer.status_code == 200 and answer.headers["cache-control"] == IMMUTABLE
        for path in ("/", "/about", "/config.json"):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.headers["cache-control"] == "no-cache", path
        assert client.get("/config.json").json()["apiBaseUrl"] == site.origin


def test_the_console_works_at_console_beside_the_app(front_config: Path, site: Site, browser: WebDriver) -> None:
    browser.get(site.origin + "/console/files")  # a deep link: nginx answers it with the console's page
    wait_for(browser, visible("#view input[name='email']"))
    assert browser.find_element(By.ID, "brand").get_attribute("href") == site.origin + "/console/"
    with site.client() as client:
        answer = client.get("/console/")
        assert '<meta name="console-root" content="/console/">' in answer.text
        assert answer.headers["cache-control"] == "no-cache"
        for name in re.findall(r'"/assets/([^"]+)"', answer.text):
            assert client.get(f"/assets/{name}").status_code == 200, name


def test_a_changed_component_is_served_after_a_redeploy_and_the_old_build_after_a_rollback(
    front_config: Path, ui: Path, site: Site, browser: WebDriver
) -> None:
    first = assets(site)
    about = ui / "src/About.vue"
    about.write_text(about.read_text().replace("version one", "version two"))
    deploy(front_config, SECOND)
    second = assets(site)
    assert second != first
    assert title_after_reload(browser, site) == ("About", "version two")
    back = inv("rollback", "--config", str(front_config))
    assert back.returncode == 0, back.stdout + back.stderr
    assert assets(site) == first
    assert title_after_reload(browser, site) == ("About", "version one")
