"""`inv users.*` as commands: what runs on the host, how a password travels, how a refusal reads."""

from __future__ import annotations

import io
import shlex

import pytest

from appliance.config import load_config
from appliance.errors import StepFailed
from appliance.releases import Release
from appliance.remote import CommandResult
from appliance.users import add_words, failure, invite_words, read_password, users_command
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def release() -> Release:
    return Release(load_config(REPO / "appliance.example.toml", "production").settings, "20260501-120000-abc1234")


def test_the_command_runs_the_service_module_in_the_running_api_and_never_holds_the_password() -> None:
    command = users_command(release(), *add_words("Ops@Example.com", admin=True))
    words = shlex.split(command.split(" && ", 1)[1])
    assert words[words.index("exec") :] == [
        "exec", "-T", "api", "python3", "-m", "service.users", "add", "Ops@Example.com", "--admin",
    ]  # fmt: skip
    assert "--project-name" in words and words[words.index("--file") + 1] == "api.yml"
    assert shlex.split(users_command(release(), *invite_words(3, "for Li Lei; ok")))[-5:] == [
        "invite", "--days", "3", "--note", "for Li Lei; ok",
    ]  # fmt: skip


def test_a_script_pipes_the_password_and_an_empty_one_is_refused() -> None:
    assert read_password(io.StringIO("s3cret pass\nignored\n")) == "s3cret pass"
    with pytest.raises(StepFailed, match="no password given"):
        read_password(io.StringIO(""))


def test_a_refusal_is_the_services_own_line() -> None:
    refused = CommandResult("", "error: no account x@example.com; see `inv users.list`\n", 1)
    assert failure("root@cvm", ("disable", "x@example.com"), refused) == (
        "root@cvm: users disable: no account x@example.com; see `inv users.list`"
    )
    no_api = CommandResult("", "ERROR: No container found for api_1\n", 1)
    assert failure("root@cvm", ("list",), no_api) == (
        "root@cvm: users list: exit 1: ERROR: No container found for api_1 (is the API running? inv status)"
    )
