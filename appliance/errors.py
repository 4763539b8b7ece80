"""Errors an operator can act on: one line, what and where, what to do."""

from __future__ import annotations


class ApplianceError(Exception):
    """A failure reported to the operator as one line; `exit_code` is the process status."""

    exit_code = 1


class ConfigError(ApplianceError):
    """The configuration (appliance.toml or secrets) is wrong; nothing has touched a host."""

    exit_code = 2


class SshError(ApplianceError):
    """The host could not be reached, refused us, or is not who it was."""

    exit_code = 3


class StepFailed(ApplianceError):
    """A remote step failed; steps after it did not run."""

    exit_code = 4


class SandboxError(ApplianceError):
    """The local sandbox CVM could not be built, started or removed."""

    exit_code = 5
