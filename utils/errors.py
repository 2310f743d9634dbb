"""Errors the user sees: bad input (one line, exit 2) and an interrupted run."""
from __future__ import annotations

import signal


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint, path).

    ``main.py`` prints the message as one line and exits with code 2, no traceback.
    The message names the problem and the fix."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message as one bounded line (library messages span lines), or its type name."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the current step finished and a checkpoint was saved."""

    def __init__(self, signum: int, step: int, checkpoint):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved: {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
