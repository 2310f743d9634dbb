"""Every path a run is given, with the kind it must be: checked in one place, before anything is
computed or written, so a file where a directory belongs (or the reverse) is one line, not a
traceback hours later. A new path option is added to :data:`PATHS` (a test finds any that is not)."""
from __future__ import annotations

from pathlib import Path

from utils.errors import UserError

# key -> kind: "dir" (made when missing), "model dir" (must exist when local), "file" (read),
# "any" (a file or a directory), "hub or dir" (a hub id, or a local directory when it exists)
PATHS = {
    "training.output_dir": "dir", "training.checkpoint_dir": "dir", "training.log_dir": "dir",
    "distill.teacher_cache.dir": "dir", "distill.pseudo_labels.cache_dir": "dir",
    "data.train_file": "file", "data.validation_file": "file", "data.test_file": "file",
    "data.unlabeled_file": "file",
    "teacher.tokenizer.path": "any", "student.tokenizer.path": "any",
    "teacher.name_or_path": "hub or dir", "student.name_or_path": "hub or dir",
    "benchmark.models[].path": "model dir",
}


def config_paths(cfg) -> list[tuple[str, str, str]]:
    """(key, kind, value) of every path set in ``cfg`` (a list entry's key names its index)."""
    found = []
    for key, kind in PATHS.items():
        head, _, tail = key.partition("[]")
        nodes = [(head, _get(cfg, head))]
        if tail:
            nodes = [(f"{head}[{i}]{tail}", _get(item, tail[1:])) for i, item in enumerate(nodes[0][1] or [])]
        found += [(k, kind, v) for k, v in nodes if isinstance(v, str) and v]
    return found


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    return obj


def check_path_kinds(cfg, flags: dict[str, tuple[str, str | None]] | None = None) -> None:
    """Refuse every configured path (and ``flags``: the command-line paths, by kind) that exists
    but is the wrong kind."""
    given = config_paths(cfg) + [(flag, kind, value) for flag, (kind, value) in (flags or {}).items() if value]
    for key, kind, value in given:
        path = Path(value).expanduser()
        if path.is_symlink() and not path.exists():
            raise UserError(f"{key} {value} is a broken symbolic link; point it at an existing path or remove it")
        if kind in ("dir", "model dir", "hub or dir") and path.is_file():
            raise UserError(f"{key} {value} is a file; {_WANT[kind]}")
        if kind == "file" and path.is_dir():
            raise UserError(f"{key} {value} is a directory; {_WANT[kind]}")
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise UserError(f"{key} {value} is not a regular file or directory (a device or a pipe); {_WANT[kind]}")


_WANT = {"dir": "give a directory (it is created when missing)",
         "model dir": "give the saved model's directory (…/final, with config.json)",
         "hub or dir": "give a hub model id or a saved model's directory",
         "file": "give the file itself", "any": "give a tokenizer file or directory"}
