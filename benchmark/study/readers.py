"""Reading the files the study and its runs wrote, each validated: a damaged one is refused in one line
that names it and the fix, never a traceback halfway through the table."""
from __future__ import annotations

import json
import math
from pathlib import Path

from utils.errors import UserError, one_line


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


def latency_value(value) -> bool:
    """A latency in ms: absent (None) or a finite number >= 0."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                             and value >= 0)
