"""Reading config files (JSON or YAML), ``--set`` overrides and section files into a Config.

Errors are :class:`utils.errors.UserError` with one line naming the file (or the ``--set`` flag) and
the dotted key, e.g. ``my.yaml: training.student.lerning_rate: unknown key (did you mean
'learning_rate'?)``, so ``main.py`` can print it and exit with code 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from settings.schema import DEMO_CONFIG, Config, LossSpec
from utils.errors import one_line, UserError
from utils.files import atomic_write_text

def read_config_file(path: str | Path, flag: str = "--config") -> dict:
    """Read a JSON or YAML file into a dict, with one-line errors naming ``flag`` (what gave the path)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a config file; give {flag} a .json or .yaml file")
    if not path.exists():
        raise UserError(f"config file not found: {path} (check the path given to {flag})")
    if not path.is_file():
        raise UserError(f"{path} is not a regular file (a device or a pipe); give {flag} a .json or .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at position {e.start}); "
                        f"save the config as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror})") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise UserError(f"{path}: {len(text):,} characters, over the {MAX_CONFIG_CHARS:,} a config may hold; "
                        f"{_largest_line(text)}")
    if _text_depth(text) > 2 * MAX_DEPTH:  # checked before parsing: PyYAML takes minutes on deep nesting
        raise UserError(f"{path}: nested too deeply to be a config; a config is at most {MAX_DEPTH} levels deep")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config; a config is at most {MAX_DEPTH} levels "
                        f"deep") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise UserError(f"{path}: {one_line(e)}; write a number of sensible size") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    check_tree(data, str(path))
    return data


def _largest_line(text: str) -> str:
    """Where an oversized config's size is: one huge value (a template, a list), or rows of data."""
    lines = text.splitlines() or [text]
    number, line = max(enumerate(lines, 1), key=lambda item: len(item[1]))
    if len(line) > MAX_CONFIG_CHARS // 2:
        return (f"line {number} alone holds {len(line):,} ({line.strip()[:30]!r}...): shorten that value, or keep "
                f"large texts in files")
    return f"its {len(lines):,} lines look like data: give --config the config file, not a data file"


MAX_CONFIG_CHARS = 1_000_000
MAX_DEPTH = 20           # a config is 4 levels deep; loss options add a few
MAX_VALUES = 100_000     # values after YAML aliases are expanded (each alias counts as a copy)


def _text_depth(text: str) -> int:
    """An upper bound of the nesting a text can parse to: open brackets (quoted ones count too,
    harmless at this bound), and block indentation in steps of two columns."""
    depth = deepest = 0
    for ch in re.sub(r"[^\[\]{}]", "", text):
        depth = depth + 1 if ch in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    indent = max((len(m) for m in re.findall(r"^[ \t]*(?=\S)", text, re.M)), default=0)
    return max(deepest, indent // 2)


def check_tree(data, source: str) -> None:
    """Refuse a value tree no config can be: deeper than MAX_DEPTH, or more than MAX_VALUES values
    once YAML aliases are expanded (a "billion laughs" file is a few lines that expand to 10^9)."""
    count = 0
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise UserError(f"{source}: more than {MAX_VALUES:,} values (YAML aliases expanded); a config is a few "
                            f"hundred: check for aliases (*name) that repeat large parts")
        if depth > MAX_DEPTH:
            raise UserError(f"{source}: nested more than {MAX_DEPTH} levels deep; a config has sections of keys")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple, set)):
            stack.extend((v, depth + 1) for v in value)


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``; errors name the dotted key."""
    if not isinstance(data, dict):
        raise _KeyError(where, f"expected a mapping, got {type(data).__name__} {short_repr(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    data = dict(data)
    for key in data:
        if not isinstance(key, str):
            hint = " (YAML reads yes/no/on/off/y/n as booleans)" if isinstance(key, bool) else ""
            raise _KeyError(_join(where, short_repr(key)), f"keys must be strings, got {type(key).__name__}{hint}; "
                                                           f"write the key as quoted text")
    if cls is LossSpec:  # loss options may sit beside name/weight
        params = data.pop("params", None) or {}
        if not isinstance(params, dict):
            raise _KeyError(_join(where, "params"), f"expected a mapping of loss options, got {type(params).__name__} "
                                                    f"{short_repr(params)}; e.g. params: {{temperature: 2.0}}")
        params = dict(params)
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
        # report the most specific failure (a nested key, a bad value of the right type) or a type summary
        nested = [e for e in errors if e.key != where or not e.msg.startswith("expected ")]
        if nested:
            raise nested[0]
        raise _KeyError(where, f"expected {_type_name(tp)}, got {type(value).__name__} {short_repr(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where)
    if origin is list:
        if not isinstance(value, list):
            raise _KeyError(where, f"expected a list, got {type(value).__name__} {short_repr(value)}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _KeyError(where, f"expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        return _float(value, where)
    if tp is int and type(value) is int and abs(value) > MAX_INT:
        raise _KeyError(where, f"{value:.3g} is beyond any sensible setting (|value| <= {MAX_INT:.3g})")
    if tp is str and type(value) is str and "\x00" in value:
        raise _KeyError(where, f"contains a NUL character ({short_repr(value)}); remove it")
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is Any:
        return value
    raise _KeyError(where, f"expected {_type_name(tp)}, got {type(value).__name__} {short_repr(value)}")


MAX_INT = 2**63 - 1  # fields with a tighter sensible range check it in the schema


def _float(value, where) -> float:
    """Every float of the schema is finite: NaN passes every range check (nan < lo is False) and
    poisons a run later, so it stops here. YAML 1.1 reads 5e-5 (no dot) as a string: a string
    that is plainly a number is accepted."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            number = float("inf")
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise _KeyError(where, f"expected float, got {type(value).__name__} {short_repr(value)}")
    if not math.isfinite(number):
        raise _KeyError(where, f"must be a finite number, got {short_repr(value)}")
    return number


def short_repr(value, limit: int = 60) -> str:
    """repr() for messages, bounded: a hostile value (a huge nested alias) must not hang the error."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxset = r.maxtuple = 4
    r.maxlevel = 2
    return r.repr(value)


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
    except (yaml.YAMLError, ValueError, RecursionError):
        value = raw
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw  # 'detoxify: ' is a prefix string, not a one-key mapping
    check_tree(value, f"--set {short_repr(text)}")
    return key.strip().split("."), value


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: mappings merge, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


Override = Union[str, tuple[str, str]]  # "key=value", or (how the user wrote it, "key=value")


def load_config(path: str | Path | None, overrides: list[Override] = (),
                sections: dict[str, str | Path] | None = None) -> Config:
    """Load ``path`` (or the embedded demo), merge per-section files and ``--set`` overrides.

    ``sections`` maps a section name ('teacher', 'student') to a file holding that section
    (either the bare section or a mapping with that one key). An override may come with the
    label the user wrote it as (e.g. ``--output_dir X``): errors name that."""
    path = Path(path) if path else DEMO_CONFIG
    raw = read_config_file(path)
    layers = [(str(path), raw)]  # (source, what it set), to blame the right one in an error
    for name, file in (sections or {}).items():
        part = read_config_file(file, f"--{name}_config")
        part = part[name] if set(part) == {name} else part
        raw = merge(raw, {name: part})
        layers.append((str(file), {name: part}))
    for item in overrides:
        label, text = item if isinstance(item, tuple) else (f"--set {item}", item)
        keys, value = parse_override(text)
        nested = value
        for k in reversed(keys):
            nested = {k: nested}
        raw = merge(raw, nested)
        layers.append((label, nested))
    check_tree(raw, str(path))
    try:
        cfg = from_dict(Config, raw)
    except _KeyError as e:
        raise UserError(f"{_blame(layers, e.key)}: {e.key}: {e.msg}") from None
    _resolve_paths(cfg, path.resolve().parent)
    return cfg


def _blame(layers: list[tuple[str, dict]], key: str) -> str:
    """The source that set ``key`` (a dotted key, maybe with [i]): the last layer that reaches
    deepest along its path."""
    parts = [p for p in re.split(r"\.|\[(\d+)\]", key) if p]
    best, best_depth = layers[0][0], -1
    for source, tree in layers:
        depth, node = 0, tree
        for part in parts:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
            depth += 1
        if depth >= best_depth and depth > 0:
            best, best_depth = source, depth
    return best


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Relative file paths are tried against the config's directory, then the cwd."""
    def exists(p: Path) -> bool:
        try:
            return p.exists()
        except OSError:  # e.g. a name too long for the file system: the data loader says it is missing
            return False

    def fix(p):
        if p is None or Path(p).is_absolute() or exists(Path(p)):
            return p
        cand = base / p
        return str(cand) if exists(cand) else p
    for m in (cfg.teacher, cfg.student):
        m.tokenizer.path = fix(m.tokenizer.path)
        if m.name_or_path and ("/" in m.name_or_path or m.name_or_path.startswith(".")):
            m.name_or_path = fix(m.name_or_path)
    for f in ("train_file", "validation_file", "test_file", "unlabeled_file"):
        setattr(cfg.data, f, fix(getattr(cfg.data, f)))
    for extra in cfg.benchmark.models:
        extra.path = fix(extra.path)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """The resolved config as JSON (:func:`resolved_dict`)."""
    atomic_write_text(Path(path), json.dumps(resolved_dict(cfg), indent=2) + "\n")


def resolved_dict(cfg: Config) -> dict:
    """The config as saved with a run; a pretrained model's scratch ``arch`` block, which does not apply, is left out."""
    resolved = to_dict(cfg)
    for role in ("teacher", "student"):
        if resolved[role]["init"] == "pretrained":
            del resolved[role]["arch"]
    return resolved
