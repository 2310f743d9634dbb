"""Reading config files (JSON or YAML), ``--set`` overrides and section files into a Config.

Errors are :class:`utils.UserError` with one line naming the file (or the ``--set`` flag) and
the dotted key, e.g. ``my.yaml: training.student.lerning_rate: unknown key (did you mean
'learning_rate'?)``, so ``main.py`` can print it and exit with code 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from config.schema import DEMO_CONFIG, Config, LossSpec
from utils import UserError

def read_config_file(path: str | Path) -> dict:
    """Read a JSON or YAML file into a dict, with one-line errors."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a config file; give --config a .json or .yaml file")
    if not path.is_file():
        raise UserError(f"config file not found: {path} (check the path given to --config)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at position {e.start}); "
                        f"save the config as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``; errors name the dotted key."""
    if not isinstance(data, dict):
        raise _KeyError(where, f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    data = dict(data)
    if cls is LossSpec:  # loss options may sit beside name/weight
        params = dict(data.pop("params", {}) or {})
        params.update({k: data.pop(k) for k in list(data) if k not in names})
        data["params"] = params
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(names)})"
            raise _KeyError(_join(where, key), f"unknown key{hint}")
        kwargs[key] = _convert(hints[key], value, _join(where, key))
    try:
        return cls(**kwargs)
    except ValueError as e:
        key, _, msg = str(e).partition(": ")
        raise _KeyError(_join(where, key), msg) from None


class _KeyError(Exception):
    def __init__(self, key, msg):
        super().__init__(f"{key}: {msg}")
        self.key, self.msg = key, msg


def _join(where, key):
    return f"{where}.{key}" if where else key


def _convert(tp, value, where):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except _KeyError as e:
                errors.append(e)
        # report the most specific failure (a nested key) or a type summary
        nested = [e for e in errors if e.key != where]
        if nested:
            raise nested[0]
        raise _KeyError(where, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where)
    if origin is list:
        if not isinstance(value, list):
            raise _KeyError(where, f"expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _KeyError(where, f"expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-5 (no dot) as a string; accept what is plainly a number
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is Any:
        return value
    raise _KeyError(where, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _type_name(tp):
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        return "a list of mappings" if dataclasses.is_dataclass(item) else f"a list of {_type_name(item)}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'training.student.learning_rate=3e-4'`` -> (['training','student','learning_rate'], 3e-4)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set training.seed=1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw  # 'detoxify: ' is a prefix string, not a one-key mapping
    return key.strip().split("."), value


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: mappings merge, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] = (),
                sections: dict[str, str | Path] | None = None) -> Config:
    """Load ``path`` (or the embedded demo), merge per-section files and ``--set`` overrides.

    ``sections`` maps a section name ('teacher', 'student') to a file holding that section
    (either the bare section or a mapping with that one key)."""
    path = Path(path) if path else DEMO_CONFIG
    raw = read_config_file(path)
    origin = {k: str(path) for k in raw}
    for name, file in (sections or {}).items():
        part = read_config_file(file)
        part = part[name] if set(part) == {name} else part
        raw = merge(raw, {name: part})
        origin[name] = str(file)
    for text in overrides:
        keys, value = parse_override(text)
        nested = value
        for k in reversed(keys):
            nested = {k: nested}
        raw = merge(raw, nested)
        origin[keys[0]] = f"--set {text}"
    try:
        cfg = from_dict(Config, raw)
    except _KeyError as e:
        src = origin.get(e.key.split(".")[0].split("[")[0], str(path))
        raise UserError(f"{src}: {e.key}: {e.msg}") from None
    cfg_base = path.resolve().parent
    _resolve_paths(cfg, cfg_base)
    return cfg


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Relative file paths are tried against the config's directory, then the cwd."""
    def fix(p):
        if p is None or Path(p).is_absolute() or Path(p).exists():
            return p
        cand = base / p
        return str(cand) if cand.exists() else p
    for m in (cfg.teacher, cfg.student):
        m.tokenizer.path = fix(m.tokenizer.path)
        if m.name_or_path and ("/" in m.name_or_path or m.name_or_path.startswith(".")):
            m.name_or_path = fix(m.name_or_path)
    for f in ("train_file", "validation_file", "test_file"):
        setattr(cfg.data, f, fix(getattr(cfg.data, f)))
    for extra in cfg.benchmark.models:
        extra.path = fix(extra.path)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n", encoding="utf-8")


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config stored in a checkpoint or a run directory."""
    return from_dict(Config, data)
