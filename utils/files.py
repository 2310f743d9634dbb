"""Files: writable directories and atomic writes (a kill leaves the old file or the new one)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from utils.errors import UserError


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """``path``, once checked to be a directory this process may create and write into; nothing is
    created here (whoever writes first makes it), so a run refused later leaves no trace."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a directory; choose another directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable ({existing}: permission denied or a read-only file "
                        f"system); choose another directory")
    return path


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """``write(f)`` into a temporary file, flush, fsync, then rename over ``path``: a kill at any
    moment leaves either the previous file or the complete new one, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # one per process: writers never share it
    with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_records(path: Path) -> tuple[list[dict], int]:
    """The JSON-object lines of a log we append to (metrics.jsonl), and how many lines are damaged (a
    kill mid-write, a disk error): those are skipped, the rest stays usable."""
    records, damaged = [], 0
    for line in Path(path).read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            damaged += 1
    return records, damaged
