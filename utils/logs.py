"""Logging: timestamped progress on stdout, and the run's log file once a stage may write."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("kd")


class _ConsoleHandler(logging.StreamHandler):
    """Progress lines go to stdout (whatever sys.stdout is at the time: it may be replaced after
    setup, e.g. by tests), so stderr carries only the one-line error of a failed run."""

    def emit(self, record):
        self.stream = sys.stdout
        super().emit(record)


_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging(level=logging.INFO) -> None:
    """Timestamped lines on stdout; a log file is added with :func:`attach_log_file`."""
    log.setLevel(level)
    log.propagate = False
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)
    console = _ConsoleHandler()
    console.setFormatter(_FORMAT)
    log.addHandler(console)


def attach_log_file(path: Path) -> None:
    """Also append the log to ``path`` (once a stage may write into its run directory)."""
    path = Path(path).resolve()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in log.handlers):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(_FORMAT)
    log.addHandler(fh)
