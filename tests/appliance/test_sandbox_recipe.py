"""The sandbox reuses the machine's own Debian mirror, in either apt sources format."""

from __future__ import annotations

import pytest

from appliance.sandbox import DebianMirror, debian_mirror

pytestmark = pytest.mark.unit


def test_deb822_sources_give_archive_and_security() -> None:
    text = (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
    )
    assert debian_mirror(text) == DebianMirror(
        "http://mirror.example/debian", "http://security.example/debian-security"
    )


def test_one_line_sources_without_security_fall_back_to_the_convention() -> None:
    text = "# comment\ndeb [arch=amd64] http://mirrors.tencentyun.com/debian/ bookworm main\n"
    assert debian_mirror(text) == DebianMirror(
        "http://mirrors.tencentyun.com/debian", "http://mirrors.tencentyun.com/debian-security"
    )


def test_no_debian_archive() -> None:
    assert debian_mirror("deb https://packages.example/apt stable main\n") is None
