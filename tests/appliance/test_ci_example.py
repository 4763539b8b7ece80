"""The example pipeline in docs/examples calls tasks and flags that exist."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

import tasks
from tests.conftest import REPO

pytestmark = pytest.mark.unit
EXAMPLE = REPO / "docs/examples/github-actions.yml"


def inv_calls() -> list[list[str]]:
    """Every `inv ...` command line in the example's run steps, split into words."""
    jobs = yaml.safe_load(EXAMPLE.read_text())["jobs"]
    runs = [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step]
    return [shlex.split(line)[1:] for run in runs for line in re.findall(r"\.venv/bin/inv [^\n]+", run)]


def test_the_example_deploys_staging_then_production_and_notifies_on_failure() -> None:
    jobs = yaml.safe_load(EXAMPLE.read_text())["jobs"]
    assert jobs["staging"]["needs"] == "test" and jobs["production"]["needs"] == "staging"
    assert "refs/tags/v" in jobs["production"]["if"] and jobs["notify"]["if"] == "failure()"
    assert [call[0] for call in inv_calls()] == ["deploy", "releases", "deploy", "status", "restore.drill"]


def test_the_drill_runs_on_a_schedule_alone_with_the_key_from_a_secret() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    jobs = example["jobs"]
    assert example[True]["schedule"]  # YAML 1.1 reads the key `on` as true
    assert jobs["drill"]["if"] == "github.event_name == 'schedule'" and "schedule" in jobs["test"]["if"]
    assert "drill" in jobs["notify"]["needs"]
    setup = jobs["drill"]["steps"][1]
    assert setup["env"]["BACKUP_AGE_KEY"] == "${{ secrets.BACKUP_AGE_KEY }}"
    assert "~/.config/cvm-appliance/backup-key.txt" in setup["run"]


def test_every_task_and_flag_in_the_example_exists() -> None:
    for words in inv_calls():
        task = tasks.namespace[words[0]]
        flags = {f"--{argument.name.replace('_', '-')}" for argument in task.get_arguments()}
        used = {word.split("=")[0] for word in words[1:] if word.startswith("--")}
        assert used <= flags, (words[0], used - flags)
