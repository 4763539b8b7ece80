"""Build the web console: copy service/web to OUT with content-hashed asset names.

`python3 -m service.webbuild SRC OUT` (stdlib only, so it also runs as a plain script in the image build).

OUT gets `index.html` and `assets/<stem>.<hash8><suffix>` for every other file in SRC. References to
source files (quoted, or in CSS `url(...)`, optionally with `./`) are rewritten: index.html points at
`/assets/<hashed name>` (absolute, so deep links such as /d/<id> that nginx answers with index.html
still load them), assets point at each other by `./<hashed name>`. A file's hash covers its rewritten
text, so changing a module changes the names of the modules that import it too; nginx can then cache
`/assets/` forever and only revalidate `index.html`. Files in SRC's `vendor/` folder (third-party code as
published, e.g. `./vendor/markdown-it.esm.min.js`) get hashed names too but ship byte for byte: never rewritten.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from pathlib import Path

ENTRY = "index.html"
ASSETS = "assets"
VENDOR = "vendor"
# A quoted name or a CSS url(): ("app.js"), ('./i18n.js'), url(style.css), ("./vendor/markdown-it.esm.min.js").
REFERENCE = re.compile(
    rf"""(?P<open>["'(])(?:\./)?(?P<name>(?:{VENDOR}/)?[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.(?:js|css|svg|png|ico|json|webmanifest|txt))(?=["')])"""
)
TEXT_SUFFIXES = {".html", ".js", ".css", ".svg", ".json", ".webmanifest"}


class WebBuildError(Exception):
    """The source tree cannot be built as it is."""


def references(text: str, known: set[str]) -> list[str]:
    """Source file names `text` refers to, in order of first appearance, among `known`."""
    found: list[str] = []
    for match in REFERENCE.finditer(text):
        name = match["name"]
        if name in known and name not in found:
            found.append(name)
    return found


def rewrite(text: str, names: dict[str, str], prefix: str) -> str:
    """`text` with every reference to a key of `names` replaced by prefix + its hashed name."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        return match["open"] + prefix + names[name] if name in names else match[0]

    return REFERENCE.sub(replace, text)


def rewritten(name: str) -> bool:
    """Whether the source `name` is the project's own text, whose references are rewritten (vendored files are not)."""
    return Path(name).suffix in TEXT_SUFFIXES and not name.startswith(f"{VENDOR}/")


def source_files(src: Path) -> dict[str, bytes]:
    """SRC's files by their names relative to it: its own, flat, and those in its `vendor/` folder, flat too."""
    vendored = src / VENDOR
    files = [*src.iterdir(), *(vendored.iterdir() if vendored.is_dir() else [])]
    nested = [p for p in files if p.is_dir() and p != vendored]
    if nested:
        raise WebBuildError(f"{nested[0]} is a folder; keep the console's source flat (third-party files: {VENDOR}/)")
    return {
        p.relative_to(src).as_posix(): p.read_bytes()
        for p in sorted(files)
        if p.is_file() and not p.name.startswith(".")
    }


def hashed_name(name: str, content: bytes) -> str:
    path = Path(name)
    return f"{path.stem}.{hashlib.sha256(content).hexdigest()[:8]}{path.suffix}"


def _build_order(sources: dict[str, bytes]) -> list[str]:
    """Asset names, each after every asset it refers to (its hash depends on theirs)."""
    known = set(sources)
    deps = {name: references(content.decode(), known) if rewritten(name) else [] for name, content in sources.items()}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise WebBuildError(f"web assets refer to each other in a cycle through {name}; break the cycle")
        visiting.add(name)
        for dep in deps[name]:
            if dep == ENTRY:
                raise WebBuildError(f"{name} refers to {ENTRY}; only {ENTRY} may refer to assets")
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in sorted(deps):
        visit(name)
    return [name for name in order if name != ENTRY]


def build(src: Path, out: Path) -> dict[str, str]:
    """Build `src` into `out` (replaced); return the map of source names to their paths under `out`."""
    if not (src / ENTRY).is_file():
        raise WebBuildError(f"{src / ENTRY} is missing; the console's source folder needs its {ENTRY}")
    sources = source_files(src)
    names: dict[str, str] = {}
    outputs: dict[str, bytes] = {}
    for name in _build_order(sources):
        content = sources[name]
        if rewritten(name):
            content = rewrite(content.decode(), names, "./").encode()
        names[name] = hashed_name(name, content)
        outputs[names[name]] = content
    if out.exists():
        shutil.rmtree(out)
    (out / ASSETS).mkdir(parents=True)
    for filename, content in outputs.items():
        (out / ASSETS / filename).write_bytes(content)
    (out / ENTRY).write_text(rewrite(sources[ENTRY].decode(), names, f"/{ASSETS}/"))
    return {ENTRY: ENTRY, **{name: f"{ASSETS}/{hashed}" for name, hashed in names.items()}}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m service.webbuild SRC OUT", file=sys.stderr)
        return 2
    try:
        built = build(Path(argv[0]), Path(argv[1]))
    except WebBuildError as exc:
        print(f"webbuild: {exc}", file=sys.stderr)
        return 1
    print(f"webbuild: {len(built)} files into {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
