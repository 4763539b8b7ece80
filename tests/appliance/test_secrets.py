"""Secrets: private file only, environment wins, generated once and kept, never printed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.secrets import GENERATED, MASK, Secret, ensure_generated, load_secrets

pytestmark = pytest.mark.unit


def private_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secrets.env"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_world_readable_file_is_refused(tmp_path: Path) -> None:
    path = private_file(tmp_path, "AI_API_KEY=sk-abcdef\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        load_secrets(path, {})
    assert str(caught.value) == f"{path}: mode 0644 lets other users read secrets: run chmod 600 {path}"


def test_file_values_quotes_comments_and_environment_override(tmp_path: Path) -> None:
    path = private_file(tmp_path, "# keys\nexport AI_API_KEY='sk-one,sk-two'\n\nCOS_SECRET_ID=\"AKIDxyz\"\n")
    secrets = load_secrets(path, {"COS_SECRET_ID": "AKIDfromenv", "UNRELATED": "x"})
    assert secrets.require(["AI_API_KEY"])["AI_API_KEY"].reveal() == "sk-one,sk-two"
    assert secrets.require(["COS_SECRET_ID"])["COS_SECRET_ID"].reveal() == "AKIDfromenv"


def test_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"secrets.env:2: expected NAME=value"):
        load_secrets(private_file(tmp_path, "AI_API_KEY=a\nnot a line\n"), {})
    with pytest.raises(ConfigError, match=r"secrets.env:1: unknown secret AI_KEY"):
        load_secrets(private_file(tmp_path, "AI_KEY=a\n"), {})


def test_missing_secrets_are_all_named(tmp_path: Path) -> None:
    secrets = load_secrets(tmp_path / "absent.env", {})
    with pytest.raises(ConfigError) as caught:
        secrets.require(["AI_API_KEY", "COS_SECRET_KEY"])
    assert "missing secret(s) AI_API_KEY, COS_SECRET_KEY" in str(caught.value)


def test_generated_secrets_are_created_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    assert ensure_generated(path, {}) == list(GENERATED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = {name: load_secrets(path, {}).require([name])[name].reveal() for name in GENERATED}
    assert ensure_generated(path, {}) == []
    second = {name: load_secrets(path, {}).require([name])[name].reveal() for name in GENERATED}
    assert first == second
    assert all(len(value) >= 32 for value in first.values())


def test_generation_appends_without_touching_existing_values(tmp_path: Path) -> None:
    path = private_file(tmp_path, "JWT_SECRET=kept-jwt-secret-value")  # no trailing newline
    assert ensure_generated(path, {}) == ["POSTGRES_PASSWORD", "REDIS_PASSWORD"]
    assert load_secrets(path, {}).require(["JWT_SECRET"])["JWT_SECRET"].reveal() == "kept-jwt-secret-value"


def test_secrets_never_print(tmp_path: Path) -> None:
    secret = Secret("sk-live-123456")
    assert str(secret) == MASK
    assert repr(secret) == f"Secret({MASK!r})"
    assert f"{secret}" == MASK
    secrets = load_secrets(private_file(tmp_path, "AI_API_KEY=sk-first-key,sk-second-key\n"), {})
    assert secrets.redact("401 for sk-second-key at line 3") == f"401 for {MASK} at line 3"
