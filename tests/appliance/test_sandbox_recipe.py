"""The sandbox reuses the machine's own Debian mirror, in either apt sources format; each release its own defaults."""

from __future__ import annotations

import pytest

from appliance.errors import SandboxError
from appliance.sandbox import BASE_IMAGE, DebianMirror, SandboxSpec, debian_mirror

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


def test_a_trixie_sandbox_has_its_own_image_name_ports_and_config_beside_the_bookworm_one() -> None:
    bookworm, trixie = SandboxSpec.for_release("bookworm"), SandboxSpec.for_release("trixie")
    assert bookworm == SandboxSpec() and bookworm.image == BASE_IMAGE
    assert trixie.image.startswith("cvm-base:trixie-")
    assert (trixie.name, trixie.volume, str(trixie.config_out)) == (
        "cvm-sandbox-trixie", "cvm-sandbox-trixie-docker", "sandbox-trixie.toml"
    )  # fmt: skip
    assert not set(trixie.ports) & set(bookworm.ports)
    assert trixie.state_dir != bookworm.state_dir


def test_an_unknown_release_is_refused_naming_the_ones_there_are() -> None:
    with pytest.raises(SandboxError, match=r"^unknown sandbox OS 'jammy': use one of bookworm, trixie$"):
        SandboxSpec.for_release("jammy")
