"""The one error of the host-side backup code: a line an operator can act on."""

from __future__ import annotations


class BackupError(Exception):
    """A backup, restore, drill or prune failed; the message is one line naming what to fix."""


class DeleteRefused(BackupError):
    """COS refused a delete (AccessDenied): the host's key has no delete, as inv cos.setup's CAM policy has it."""
