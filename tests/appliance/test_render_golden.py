"""`inv render` is byte-identical to the goldens made from the reference commit (tests/appliance/render_golden)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.appliance.render_golden.make import CASES, HERE, render_case

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("case", "config_file", "env"), CASES, ids=[case for case, _, _ in CASES])
def test_render_is_byte_identical_to_the_golden(case: str, config_file: Path, env: str) -> None:
    golden = json.loads((HERE / f"{case}.json").read_text(encoding="utf-8"))
    rendered = render_case(config_file, env)
    assert sorted(rendered) == sorted(golden)
    for path, (mode, content) in golden.items():
        assert rendered[path] == [mode, content], f"{path} differs from the golden {case}.json"
