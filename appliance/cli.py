"""What every task shares: loading the config once, opening the host, one-line failures."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task
from invoke.tasks import task as invoke_task

from appliance.config import Config, config_path, load_config
from appliance.errors import ApplianceError, StepFailed
from appliance.executor import StepResult
from appliance.live import console
from appliance.report import summary_text
from appliance.rollout import HostOutcome, report_lines, require_all_ok

P = ParamSpec("P")
R = TypeVar("R")

COMMON_HELP = {
    "config": "config file (default: $APPLIANCE_CONFIG or ./appliance.toml)",
    "env": "environment in the config (default: the only one, else production)",
    "host": "one of the config's hosts, by its name or address (NAME, ADDRESS[:PORT], USER@ADDRESS:PORT); "
    "any other USER@ADDRESS[:PORT] instead of the config's hosts",
}


VERBOSE_HELP = "also show each command as it runs (-v; secret values masked)"

# The only short flags: Invoke's automatic ones gave `-h` to --host, so `inv deploy -h` was no help.
SHORT_FLAGS = {"verbose": "v"}


class OperatorTask(Task[Any]):
    """An Invoke task with long flags only (and SHORT_FLAGS), so `-h` is help on every task."""

    def __init__(self, body: Callable[..., Any], **options: Any) -> None:
        # positional: none, so `-h` after a task with a required flag (users.add --email) is help, not its value.
        super().__init__(body, **{"positional": [], **options, "auto_shortflags": False})

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        opts["names"] = [*opts["names"], *SHORT_FLAGS.get(name, "")]
        return opts

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Refuse in one line a call without a flag that has no default (Invoke would hand it over as None)."""
        parameters = list(inspect.signature(self.body).parameters.values())[1:]  # after the Context
        missing = [item.name for item in parameters if item.default is item.empty and kwargs.get(item.name) is None]
        if missing:
            flags = " and ".join("--" + name.replace("_", "-") for name in missing)
            sys.stderr.write(f"error: missing {flags}: this task needs a value for it (-h lists its flags)\n")
            raise Exit(code=2)
        return super().__call__(*args, **kwargs)


def task(**options: Any) -> Callable[[Callable[..., Any]], OperatorTask]:
    """`@task(...)` for tasks.py: Invoke's decorator making an OperatorTask."""
    made: Callable[[Callable[..., Any]], OperatorTask] = invoke_task(klass=OperatorTask, **options)
    return made


def load(config: str | None, env: str | None, host: str | None = None) -> Config:
    """The validated config for a task, aimed at `host` when given."""
    loaded = load_config(config_path(config), env)
    return loaded.with_host(host) if host else loaded


# The flags of a task on one environment's host, after its own: what `load` takes.
HOST_FLAGS = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in COMMON_HELP]


def host_task(**options: Any) -> Callable[[Callable[..., None]], OperatorTask]:
    """`@host_task(...)` for a task on one environment's host: its body takes the loaded Config after the
    Context; the task takes --config, --env and --host (COMMON_HELP) besides its own flags, and fails in one line."""

    def make(body: Callable[..., None]) -> OperatorTask:
        context, _config, *flags = inspect.signature(body).parameters.values()

        @functools.wraps(body)
        def run(
            c: Context, config: str | None = None, env: str | None = None, host: str | None = None, **given: Any
        ) -> None:
            body(c, load(config, env, host), **given)

        # Invoke reads a task's flags (and OperatorTask the required ones) from this signature.
        run.__signature__ = inspect.Signature([context, *flags, *HOST_FLAGS])  # type: ignore[attr-defined]
        return task(**{**options, "help": {**COMMON_HELP, **options.get("help", {})}})(one_line_errors(run))

    return make


def print_outcome(results: Sequence[StepResult], heading: str, target: str) -> None:
    """The summary table; then, if a step failed, exit non-zero with its reason on one line."""
    console().print(summary_text(results, heading))
    failed = next((result for result in results if result.status == "failed"), None)
    if failed is not None:
        raise StepFailed(f"{target}: {failed.step}: {failed.error}")


def print_outcomes(outcomes: Sequence[HostOutcome], heading: str, what: str) -> None:
    """Several hosts' ends: each host's summary table labelled with it, then one line per host; if any host
    failed, exit non-zero naming the hosts that failed."""
    for outcome in outcomes:
        if outcome.results:
            console().print(summary_text(outcome.results, f"{outcome.host}: {outcome.summary or heading}"))
    console().print("\n".join(report_lines(outcomes)), markup=False)
    require_all_ok(outcomes, what)


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
