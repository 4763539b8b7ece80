"""What every task shares: loading the config once, opening the host, one-line failures."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

from invoke.exceptions import Exit

from appliance.config import Config, config_path, load_config
from appliance.errors import ApplianceError, StepFailed
from appliance.executor import StepResult
from appliance.report import summary_table

P = ParamSpec("P")
R = TypeVar("R")

COMMON_HELP = {
    "config": "config file (default: $APPLIANCE_CONFIG or ./appliance.toml)",
    "env": "environment in the config (default: the only one, else production)",
    "host": "USER@ADDRESS[:PORT] instead of the config's hosts",
}


def load(config: str | None, env: str | None, host: str | None = None) -> Config:
    """The validated config for a task, aimed at `host` when given."""
    loaded = load_config(config_path(config), env)
    return loaded.with_host(host) if host else loaded


def print_outcome(results: Sequence[StepResult], heading: str, target: str) -> None:
    """The summary table; then, if a step failed, exit non-zero with its reason on one line."""
    print(summary_table(results, heading))
    failed = next((result for result in results if result.status == "failed"), None)
    if failed is not None:
        raise StepFailed(f"{target}: {failed.step}: {failed.error}")


def one_line_errors(task: Callable[P, R]) -> Callable[P, R]:
    """Turn an ApplianceError into its message on stderr and its exit status, without a traceback."""

    @functools.wraps(task)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return task(*args, **kwargs)
        except ApplianceError as exc:
            sys.stderr.write(f"error: {exc}\n")
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise Exit(code=130) from None

    return wrapper
