"""`inv status --watch N`: the screen is redrawn until Ctrl-C, which ends it quietly."""

from __future__ import annotations

import pytest

import tasks


@pytest.mark.unit
def test_watch_redraws_until_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    screens = iter(["agents running 1\n", "agents running 2\n"])

    def screen() -> str:
        try:
            return next(screens)
        except StopIteration:
            raise KeyboardInterrupt from None

    tasks.watch_screen(screen, 0)
    shown = capsys.readouterr().out
    clear = "\033[H\033[2J"
    assert shown == f"{clear}agents running 1\n{clear}agents running 2\n\n"
