"""docs/architecture.md stays true: every module path it names exists, and its layers picture is the imports'."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

DOC = REPO / "docs/architecture.md"
PACKAGE = REPO / "appliance"
# A path in backticks with a folder and a file ending, e.g. `appliance/host_paths.py`, `tests/cosfake`.
NAMED_PATH = re.compile(r"`((?:appliance|service|tests|scripts|compose|monitoring|nginx|systemd|bench)/[\w./-]*)`")
# An entry of the layers picture: `  name.py  what it does` (a module) or `  name/  ...` (a package).
LAYER_ENTRY = re.compile(r"^  (\S+(?:\.py|/))\s")


def layers() -> list[str]:
    """The top-level entries of the layers picture, top to bottom: "deploy.py", "bootstrap/", ..."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("## Layers of the operator side", 1)[1].split("```", 2)[1]
    return [match[1] for line in block.splitlines() if (match := LAYER_ENTRY.match(line))]


def unit_of(module: str) -> str | None:
    """The layers entry an `appliance.…` import lands in: a top-level module, or its package."""
    parts = module.split(".")
    if parts[0] != "appliance" or len(parts) < 2:
        return None
    if (PACKAGE / parts[1]).is_dir():
        return parts[1] + "/"
    return parts[1] + ".py" if (PACKAGE / f"{parts[1]}.py").is_file() else None


def imported_units(entry: str) -> set[str]:
    files = sorted((PACKAGE / entry).rglob("*.py")) if entry.endswith("/") else [PACKAGE / entry]
    found: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found |= {unit for name in names if (unit := unit_of(name)) is not None}
    return found - {entry}


def test_every_path_the_page_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    named = set(NAMED_PATH.findall(text))
    assert len(named) > 20
    missing = sorted(path for path in named if not (REPO / path.rstrip("/")).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_module_of_the_layers_picture_exists() -> None:
    entries = layers()
    assert entries[:4] == ["fleet.py", "deploy.py", "host_release.py", "procedure.py"] and "host_paths.py" in entries
    missing = [entry for entry in entries if not (PACKAGE / entry.rstrip("/")).exists()]
    assert not missing, f"the layers picture names modules that do not exist: {missing}"


def test_the_layers_picture_matches_the_imports() -> None:
    """A module imports only modules drawn below it (modules the picture does not draw are not judged)."""
    entries = layers()
    position = {entry: index for index, entry in enumerate(entries)}
    upward = [
        f"{entry} imports {target}"
        for entry in entries
        for target in sorted(imported_units(entry))
        if target in position and position[target] < position[entry]
    ]
    assert not upward, f"imports against the layers picture of docs/architecture.md: {upward}"
