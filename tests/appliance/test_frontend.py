"""The team's own front end: [frontend] validation, the built folder's checks, the hash, the ship decision."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from appliance.config import Config, load_config
from appliance.errors import ConfigError
from appliance.frontend import (
    FolderTar,
    ShipFrontend,
    assemble_site,
    build_env,
    built_folder,
    console_path,
    runtime_config,
    shipped,
    tree_hash,
)
from appliance.releases import Release
from appliance.steps import Fact, Note, Run, Stream

pytestmark = pytest.mark.unit

HOSTS = """
public_url = "https://203.0.113.10:8443"
[environments.production]
[[environments.production.hosts]]
address = "203.0.113.10"
"""


def config_with(tmp_path: Path, frontend: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(textwrap.dedent(HOSTS) + "\n[frontend]\n" + textwrap.dedent(frontend))
    return path


def loaded(tmp_path: Path, frontend: str) -> Config:
    return load_config(config_with(tmp_path, frontend), "production")


def error_of(tmp_path: Path, frontend: str) -> str:
    with pytest.raises(ConfigError) as caught:
        built_folder(loaded(tmp_path, frontend))
    return str(caught.value)


def site(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_default_is_the_console_at_the_root(tmp_path: Path) -> None:
    config = loaded(tmp_path, "")
    assert not config.settings.frontend.custom
    assert console_path(config.settings) == "/"


def test_a_custom_front_end_at_the_root_moves_the_console(tmp_path: Path) -> None:
    assert console_path(loaded(tmp_path, 'dist = "ui"\n').settings) == "/console/"
    assert console_path(loaded(tmp_path, 'dist = "ui"\npath = "/app/"\n').settings) == "/"


@pytest.mark.parametrize(
    ("frontend", "words"),
    [
        ('source = "console"\ndist = "ui"\n', "frontend: set one of source, dist or build, not source and dist"),
        ('build = "npm run build"\n', "frontend: build needs dir"),
        ('dist = "ui"\ndir = "ui"\n', "frontend: dir is only for build"),
        ('dist = "ui"\npath = "app"\n', "frontend.path: must be / or a folder such as /app/"),
        ('dist = "ui"\npath = "/console/"\n', "path /console/ is the built-in console's"),
        ('dist = "ui"\ncdn_origin = "http://cdn.example.com/"\n', "cdn_origin must be an origin"),
        ('source = "vue"\n', "frontend.source"),
    ],
)
def test_bad_frontend_settings_are_one_line_naming_the_field(tmp_path: Path, frontend: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_with(tmp_path, frontend), "production")
    assert words in str(caught.value)
    assert str(tmp_path / "appliance.toml") in str(caught.value)


def test_a_missing_dist_is_named_with_its_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'dist = "ui/dist"\n')
    assert message == f"{tmp_path}/appliance.toml: frontend.dist: {tmp_path}/ui/dist is not a folder; " + (
        "build the front end or fix the path"
    )


def test_an_output_without_its_entry_page_is_refused(tmp_path: Path) -> None:
    site(tmp_path / "ui", {"assets/app.js": ""})
    assert "frontend.dist: " in error_of(tmp_path, 'dist = "ui"\n')
    assert error_of(tmp_path, 'dist = "ui"\n').endswith("has no index.html; it must be the build's output folder")


def test_a_failing_build_shows_its_last_lines(tmp_path: Path) -> None:
    (tmp_path / "ui").mkdir()
    command = "for i in 1 2 3 4 5 6 7; do echo line $i; done; exit 3"
    message = error_of(tmp_path, f'build = "{command}"\ndir = "ui"\n')
    assert message.startswith(f"{tmp_path}/appliance.toml: frontend.build: ")
    assert message.endswith("(exit 3): line 3 | line 4 | line 5 | line 6 | line 7")
    assert "\n" not in message


def test_the_build_gets_the_api_addresses_and_its_output_is_the_folder(tmp_path: Path) -> None:
    script = (
        'mkdir -p out && printf "%s %s %s" "$VITE_API_BASE_URL" "$VITE_WS_URL" "$APPLIANCE_ASSET_BASE" > out/index.html'
    )
    site(tmp_path / "ui", {"build.sh": script})
    frontend = "build = 'bash build.sh'\ndir = 'ui'\noutput = 'out'\ncdn_origin = 'https://cdn.example.com'\n"
    config = loaded(tmp_path, frontend)
    folder = built_folder(config)
    assert folder == tmp_path / "ui" / "out"
    expected = "https://203.0.113.10:8443 wss://203.0.113.10:8443/ws https://cdn.example.com/"
    assert (folder / "index.html").read_text() == expected
    assert build_env(config)["VITE_WS_URL"] == "wss://203.0.113.10:8443/ws"
    assert json.loads(runtime_config(config)) == {
        "apiBaseUrl": "https://203.0.113.10:8443",
        "wsUrl": "wss://203.0.113.10:8443/ws",
    }


def test_the_hash_follows_content_and_names_not_place(tmp_path: Path) -> None:
    one = site(tmp_path / "one", {"index.html": "<p>", "assets/a.js": "1"})
    two = site(tmp_path / "two", {"index.html": "<p>", "assets/a.js": "1"})
    assert tree_hash(one) == tree_hash(two)
    (two / "assets/a.js").write_text("2")
    assert tree_hash(one) != tree_hash(two)
    renamed = site(tmp_path / "three", {"index.html": "<p>", "assets/b.js": "1"})
    assert tree_hash(renamed) != tree_hash(one)


def ship(tmp_path: Path, kept: str) -> list[object]:
    config = loaded(tmp_path, 'dist = "ui"\n')
    folder = site(tmp_path / "ui", {"index.html": "<p>"})
    step = ShipFrontend(Release(config.settings, "v2"), folder, tree_hash(folder))
    return list(step.plan({"kept": Fact(kept, 0)}))


def test_the_hash_decides_whether_the_front_end_is_sent(tmp_path: Path) -> None:
    digest = tree_hash(site(tmp_path / "ui", {"index.html": "<p>"}))
    releases = "/opt/appliance/releases"
    assert ship(tmp_path, f"{releases}/v2 {digest}\n") == []
    sent = ship(tmp_path, f"{releases}/v1 0000\n")
    assert len(sent) == 1 and isinstance(sent[0], Stream)
    copied = ship(tmp_path, f"{releases}/v1 {digest}\n")
    assert isinstance(copied[0], Note) and "unchanged since v1" in copied[0].why
    assert isinstance(copied[1], Run) and f"cp -a {releases}/v1/frontend/." in copied[1].command


def test_the_streamed_tar_unpacks_to_the_same_hash(tmp_path: Path) -> None:
    folder = site(tmp_path / "ui", {"index.html": "<p>", "assets/a.js": "x" * 5000})
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-x", "-C", str(out)], input=b"".join(FolderTar(folder).chunks()), check=True)
    assert tree_hash(out) == tree_hash(folder)


def test_deploy_refuses_a_missing_dist_before_reaching_the_host(tmp_path: Path) -> None:
    from appliance.deploy import deploy

    with pytest.raises(ConfigError, match=r"frontend\.dist: .*/ui is not a folder"):
        deploy(loaded(tmp_path, 'dist = "ui"\n'), "appliance-api:v1", "v1")


def assembled(tmp_path: Path, frontend: str) -> Path:
    """A release's www after assemble_site ran through real bash: the console as copied out of the image, the team's
    shipped front end beside it."""
    base = tmp_path / "host"
    path = tmp_path / "appliance.toml"
    path.write_text(f'base_dir = "{base}"\n' + textwrap.dedent(HOSTS) + "\n[frontend]\n" + textwrap.dedent(frontend))
    config = load_config(path, "production")
    release = Release(config.settings, "v2")
    directory = Path(release.directory)
    console = '<html><meta name="console-root" content="/"><script src="/assets/app.1.js"></script></html>\n'
    site(directory / "www", {"index.html": console, "assets/app.1.js": "console"})
    site(directory / "frontend", {"index.html": "<p>team</p>", "assets/index-abc.js": "team"})
    subprocess.run(["bash", "-c", "set -o pipefail; " + assemble_site(config, release)], check=True)
    return directory / "www"


def test_the_team_s_front_end_takes_the_root_and_the_console_moves_to_console(tmp_path: Path) -> None:
    www = assembled(tmp_path, 'dist = "ui"\n')
    assert (www / "index.html").read_text() == "<p>team</p>"
    assert sorted(p.name for p in (www / "assets").iterdir()) == ["app.1.js", "index-abc.js"]
    assert '<meta name="console-root" content="/console/">' in (www / "console" / "index.html").read_text()
    assert json.loads((www / "config.json").read_text())["apiBaseUrl"] == "https://203.0.113.10:8443"
    assert not (tmp_path / "host" / "releases" / "v2" / "www.site").exists()


def test_a_front_end_at_app_leaves_the_console_at_the_root(tmp_path: Path) -> None:
    www = assembled(tmp_path, 'dist = "ui"\npath = "/app/"\n')
    assert '<meta name="console-root" content="/">' in (www / "index.html").read_text()
    assert (www / "app" / "index.html").read_text() == "<p>team</p>"
    assert (www / "app" / "assets" / "index-abc.js").read_text() == "team"
    assert json.loads((www / "app" / "config.json").read_text())["wsUrl"] == "wss://203.0.113.10:8443/ws"


def test_a_deploy_ships_before_the_console_is_copied_and_assembles_after(tmp_path: Path) -> None:
    from appliance.deploy import prepare_steps

    config = loaded(tmp_path, 'dist = "ui"\n')
    release = Release(config.settings, "v2")
    folder = site(tmp_path / "ui", {"index.html": "<p>"})
    steps = prepare_steps(config, release, [], front=shipped(config))
    names = [step.name for step in steps]
    assert names.index("ship front end") < names.index("front end") < names.index("assemble front end")
    ship = next(step for step in steps if isinstance(step, ShipFrontend))
    assert (ship.folder, ship.digest) == (folder, tree_hash(folder))
    console = [step.name for step in prepare_steps(loaded(tmp_path, ""), release, [])]
    assert "ship front end" not in console and "assemble front end" not in console
