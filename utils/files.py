"""Files: writable directories and atomic writes (a kill leaves the old file or the new one)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from utils.errors import UserError, one_line


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


# --------------------------------------------------------------------------- files we wrote, read back validated
def damaged(path: Path, why: str, fix: str) -> UserError:
    return UserError(f"{path} is damaged ({why}); {fix}")


def read_text(path: Path, fix: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise damaged(path, f"not UTF-8 text at byte {e.start}", fix) from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror}); {fix}") from None


def read_json(path: Path, fix: str, problem) -> object:
    """The JSON value in ``path``; ``problem(value)`` names what is wrong with its structure, or ''."""
    data = _parse(read_text(path, fix), path, fix, "")
    why = problem(data)
    if why:
        raise damaged(path, why, fix)
    return data


def read_jsonl(path: Path, fix: str, problem) -> list:
    """The rows of a JSON-lines file; ``problem(row)`` names what is wrong with a row, or ''."""
    rows = []
    for i, line in enumerate(read_text(path, fix).splitlines(), 1):
        if line.strip():
            row = _parse(line, path, fix, f"line {i}: ")
            why = problem(row)
            if why:
                raise damaged(path, f"line {i}: {why}", fix)
            rows.append(row)
    return rows


def _parse(text: str, path: Path, fix: str, where: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; so is a 5000-digit number
        raise damaged(path, f"{where}not JSON: {one_line(e, 80)}", fix) from None


def fields(value, **types) -> str:
    """'' when ``value`` is an object whose every ``key`` is of its type (or passes its predicate); else what is not."""
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__} where an object with {', '.join(types)} belongs"
    for key, want in types.items():
        if key not in value:
            return f"no {key!r}"
        ok = want(value[key]) if callable(want) and not isinstance(want, type) else isinstance(value[key], want)
        if not ok:
            return f"{key!r} is {value[key]!r:.40}"
    return ""


def str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)
