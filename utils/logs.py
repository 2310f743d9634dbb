"""Logging: timestamped progress on stdout, and the run's log file once a stage may write."""
from __future__ import annotations

import logging
import sys
from collections import deque
from pathlib import Path

log = logging.getLogger("kd")


class _ConsoleHandler(logging.StreamHandler):
    """Progress lines go to stdout (whatever sys.stdout is at the time: it may be replaced after
    setup, e.g. by tests), so stderr carries only the one-line error of a failed run."""

    def emit(self, record):
        self.stream = sys.stdout
        super().emit(record)


class _Pending(logging.Handler):
    """Records logged before a run may write its log file (the checks, decoding pseudo-labels,
    building a cache): held here and written first when the file is attached."""

    def __init__(self, limit: int = 10_000):
        super().__init__()
        self.records = deque(maxlen=limit)

    def emit(self, record):
        self.records.append(record)


_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging(level=logging.INFO) -> None:
    """Timestamped lines on stdout; a log file is added with :func:`attach_log_file`.

    Under torchrun rank 0 alone logs progress; the other ranks print only their warnings and
    errors, marked with their rank (every rank computes the same numbers: one copy is enough)."""
    from utils.distributed import rank
    log.setLevel(level if rank() == 0 else max(level, logging.WARNING))
    log.propagate = False
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)
    console = _ConsoleHandler()
    console.setFormatter(_FORMAT if rank() == 0 else logging.Formatter(
        f"%(asctime)s %(levelname)s [rank {rank()}] %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(console)
    log.addHandler(_Pending())


def attach_log_file(path: Path) -> None:
    """Also append the log to ``path`` (once a stage may write into its run directory); rank 0 only."""
    from utils.distributed import is_main
    if not is_main():
        return
    path = Path(path).resolve()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in log.handlers):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(_FORMAT)
    for pending in [h for h in log.handlers if isinstance(h, _Pending)]:
        for record in pending.records:
            fh.handle(record)
        log.removeHandler(pending)
    log.addHandler(fh)
