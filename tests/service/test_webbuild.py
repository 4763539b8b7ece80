from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service import webbuild

pytestmark = pytest.mark.unit
CONSOLE = Path(__file__).resolve().parents[2] / "service" / "web"
ASSET_REF = re.compile(r"""["'(](/assets/[^"')]+|\./[^"')]+)["')]""")


def small_site(root: Path) -> Path:
    root.mkdir()
    (root / "index.html").write_text(
        '<link rel="stylesheet" href="style.css"><script type="module" src="./app.js"></script>'
    )
    (root / "app.js").write_text('import { t } from "./i18n.js";\nt("x");\n')
    (root / "i18n.js").write_text("export const t = (k) => k;\n")
    (root / "style.css").write_text("body { background: url(bg.svg); }\n")
    (root / "bg.svg").write_text("<svg/>")
    return root


def referenced(out: Path) -> set[Path]:
    """Every asset path that index.html or an asset refers to, resolved inside `out`."""
    found: set[Path] = set()
    for page in [out / "index.html", *(out / "assets").iterdir()]:
        for ref in ASSET_REF.findall(page.read_text()):
            found.add(out / ref.lstrip("/") if ref.startswith("/") else page.parent / ref.removeprefix("./"))
    return found


def test_every_asset_gets_a_content_hashed_name_and_references_are_rewritten(tmp_path: Path) -> None:
    built = webbuild.build(small_site(tmp_path / "src"), tmp_path / "out")
    out = tmp_path / "out"
    assert set(built) == {"index.html", "app.js", "i18n.js", "style.css", "bg.svg"}
    assert all(re.fullmatch(r"assets/\w+\.[0-9a-f]{8}\.\w+", built[n]) for n in built if n != "index.html")
    index = (out / "index.html").read_text()
    assert f'href="/{built["style.css"]}"' in index
    assert f'src="/{built["app.js"]}"' in index
    assert f'from "./{Path(built["i18n.js"]).name}"' in (out / built["app.js"]).read_text()
    assert f"url(./{Path(built['bg.svg']).name})" in (out / built["style.css"]).read_text()
    assert referenced(out) == {out / path for name, path in built.items() if name != "index.html"}


def test_a_changed_module_renames_itself_and_its_importers_only(tmp_path: Path) -> None:
    src = small_site(tmp_path / "src")
    before = webbuild.build(src, tmp_path / "one")
    (src / "i18n.js").write_text("export const t = (k) => `${k}!`;\n")
    after = webbuild.build(src, tmp_path / "two")
    assert after["i18n.js"] != before["i18n.js"]
    assert after["app.js"] != before["app.js"]  # its import line names the new i18n
    assert after["style.css"] == before["style.css"]
    assert after["bg.svg"] == before["bg.svg"]
    assert sorted(p.name for p in (tmp_path / "two" / "assets").iterdir()) == sorted(
        Path(p).name for n, p in after.items() if n != "index.html"
    )


def test_import_cycles_are_refused_with_the_file_named(tmp_path: Path) -> None:
    src = small_site(tmp_path / "src")
    (src / "i18n.js").write_text('import "./app.js";\n')
    with pytest.raises(webbuild.WebBuildError, match="cycle through"):
        webbuild.build(src, tmp_path / "out")


def test_the_console_builds_from_the_command_line_with_nothing_dangling(tmp_path: Path) -> None:
    out = tmp_path / "web"
    run = subprocess.run(
        [sys.executable, "-m", "service.webbuild", str(CONSOLE), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assets = set((out / "assets").iterdir())
    assert {p.suffix for p in assets} == {".js", ".css", ".txt"}  # .txt: the vendored library's licence
    assert referenced(out) == assets  # every reference resolves, and no asset is unreferenced


def test_the_vendored_markdown_library_ships_unchanged_under_its_hashed_name_with_its_licence(tmp_path: Path) -> None:
    built = webbuild.build(CONSOLE, tmp_path / "web")
    library = CONSOLE / "vendor/markdown-it.esm.min.js"
    licence = (CONSOLE / "vendor/markdown-it.LICENSE.txt").read_text()
    # Byte for byte what was vendored: nothing in its 120 KB looked like a reference to the rewriter.
    assert (tmp_path / "web" / built["vendor/markdown-it.esm.min.js"]).read_bytes() == library.read_bytes()
    # The file is the one the licence file names, and the version it names is the one inside the file.
    assert hashlib.sha256(library.read_bytes()).hexdigest() in licence
    version = re.match(r"markdown-it (\S+) ", licence)
    assert version is not None
    assert library.read_text().startswith(f"/*! markdown-it {version[1]} ")
    wrapper = (tmp_path / "web" / built["markdown.js"]).read_text()
    assert f'from "./{Path(built["vendor/markdown-it.esm.min.js"]).name}"' in wrapper
    assert f'"./{Path(built["vendor/markdown-it.LICENSE.txt"]).name}"' in wrapper
    assert f'from "./{Path(built["markdown.js"]).name}"' in (tmp_path / "web" / built["app.js"]).read_text()
