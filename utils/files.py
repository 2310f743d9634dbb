"""Files: writable directories and atomic writes (a kill leaves the old file or the new one)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from utils.errors import UserError


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test{os.getpid()}"  # one per process: torchrun's ranks probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{what} {path} is not writable ({e.strerror}); choose another directory") from None
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
