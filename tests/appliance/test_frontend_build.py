"""The real build of the Vue 3 + Vite fixture (npm ci && npm run build in a copy), as `[frontend] build` runs it."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.frontend import built_folder, tree_hash
from tests.conftest import REPO

pytestmark = pytest.mark.integration

FIXTURE = REPO / "tests/fixtures/vue-app"


def test_the_fixture_builds_with_the_api_address_and_hashed_assets(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE, tmp_path / "ui", ignore=shutil.ignore_patterns("node_modules", "dist"))
    path = tmp_path / "appliance.toml"
    path.write_text(
        textwrap.dedent("""
        public_url = "https://203.0.113.10:8443"
        [frontend]
        build = "npm ci --no-audit --no-fund && npm run build"
        dir = "ui"
        [environments.production]
        [[environments.production.hosts]]
        address = "203.0.113.10"
        """)
    )
    config = load_config(path, "production")

    folder = built_folder(config)

    entry = (folder / "index.html").read_text()
    scripts = re.findall(r'src="/assets/(index-[A-Za-z0-9_-]{8}\.js)"', entry)
    assert len(scripts) == 1, entry
    assert "https://203.0.113.10:8443" in (folder / "assets" / scripts[0]).read_text()
    first = tree_hash(folder)
    (tmp_path / "ui/src/About.vue").write_text((tmp_path / "ui/src/About.vue").read_text().replace("one", "two"))
    assert tree_hash(built_folder(config)) != first
