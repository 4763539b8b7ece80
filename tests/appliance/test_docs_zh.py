"""The Chinese docs keep step with the English ones: every page has its counterpart with the same sections, the
two link to each other, and the FAQ/troubleshooting pages cover every exit status and every alert."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from tests.conftest import REPO

DOCS = REPO / "docs"
ZH = DOCS / "zh"
PAIRS = [(page, ZH / page.name) for page in sorted(DOCS.glob("*.md"))] + [
    (REPO / "README.md", REPO / "README.zh-CN.md")
]
ALERT = re.compile(r"^\s*- alert: (\w+)\s*$", re.MULTILINE)
FENCE = re.compile(r"^\s*(```|~~~)")
SECTION = re.compile(r"^#{2,3} \S")
INTERRUPTED = 130  # appliance/cli.py's status for Ctrl-C


def sections(page: Path) -> list[str]:
    """The page's level-2 and level-3 headings, those inside fenced code left out."""
    found: list[str] = []
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and SECTION.match(line):
            found.append(line)
    return found


def exit_statuses() -> set[int]:
    """Every status a task exits with: each ApplianceError kind's, and Ctrl-C's."""
    kinds: list[type[ApplianceError]] = [ApplianceError]
    for kind in kinds:
        kinds.extend(kind.__subclasses__())
    return {kind.exit_code for kind in kinds} | {INTERRUPTED}


def alert_names() -> list[str]:
    names = ALERT.findall((REPO / "monitoring" / "alerts.yml.j2").read_text(encoding="utf-8"))
    assert names, "monitoring/alerts.yml.j2 has no `- alert:` rules"
    return names


def head(page: Path) -> str:
    return "\n".join(page.read_text(encoding="utf-8").splitlines()[:5])


@pytest.mark.unit
@pytest.mark.parametrize(("english", "chinese"), PAIRS, ids=[english.name for english, _ in PAIRS])
def test_every_english_page_has_a_chinese_one_with_the_same_sections(english: Path, chinese: Path) -> None:
    assert chinese.exists(), f"{chinese.relative_to(REPO)} is missing: translate {english.relative_to(REPO)}"
    english_sections, chinese_sections = sections(english), sections(chinese)
    assert len(chinese_sections) == len(english_sections), (
        f"{chinese.relative_to(REPO)} has {len(chinese_sections)} ##/### sections, "
        f"{english.relative_to(REPO)} has {len(english_sections)}: {english_sections}"
    )


@pytest.mark.unit
@pytest.mark.parametrize(("english", "chinese"), PAIRS, ids=[english.name for english, _ in PAIRS])
def test_the_two_pages_link_to_each_other_at_the_top(english: Path, chinese: Path) -> None:
    if not chinese.exists():
        pytest.fail(f"{chinese.relative_to(REPO)} is missing")
    to_chinese = f"({chinese.relative_to(english.parent).as_posix()})"
    to_english = "(README.md)" if english.name == "README.md" else f"(../{english.name})"
    assert to_chinese in head(english), f"{english.relative_to(REPO)}: no link {to_chinese} in its first lines"
    assert to_english in head(chinese), f"{chinese.relative_to(REPO)}: no link {to_english} in its first lines"


@pytest.mark.unit
@pytest.mark.parametrize("folder", [DOCS, ZH], ids=["en", "zh"])
def test_troubleshooting_has_a_row_for_every_exit_status(folder: Path) -> None:
    page = (folder / "troubleshooting.md").read_text(encoding="utf-8")
    rows = {int(status) for status in re.findall(r"^\| `(\d+)` \|", page, re.MULTILINE)}
    assert rows == exit_statuses(), f"{folder.name}/troubleshooting.md: exit status rows {rows}"


@pytest.mark.unit
@pytest.mark.parametrize("folder", [DOCS, ZH], ids=["en", "zh"])
def test_troubleshooting_links_every_alert_to_its_runbook_entry(folder: Path) -> None:
    page = (folder / "troubleshooting.md").read_text(encoding="utf-8")
    missing = [name for name in alert_names() if f"[{name}](runbook.md#{name.lower()})" not in page]
    assert missing == [], f"{folder.name}/troubleshooting.md does not link these alerts to the runbook: {missing}"
