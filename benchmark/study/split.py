"""The study's split: every run trains, validates and is tested on the same files.

The base config's data (files, hub dataset or synthetic task) is read by the project's own loader,
so rows are cleaned and grouped by source exactly as a run would (one example per distinct source
with all its references); the examples of all its splits are pooled, sorted by source and shuffled
with ``random.Random(split_seed)``: the first ``test_sources`` are the test split, the next
``validation_sources`` the validation split, the rest the training split. The three are written as
JSON lines (``{"source": ..., "references": [...]}``) into ``<study_dir>/split/`` and every run
reads them through ``data.train_file`` / ``validation_file`` / ``test_file``.

A transfer set of the base config (``data.unlabeled_file`` or a synthetic task's
``unlabeled_examples``), less any source of the three splits, is written as ``unlabeled.jsonl``;
no run reads it unless its method says so (``data.unlabeled_file={study_dir}/split/unlabeled.jsonl``
with ``distill.pseudo_labels``): the CE-only student and the other methods train on the labeled
pairs alone.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from data_loader import Example, load_splits, unlabeled_sources
from utils.errors import UserError
from utils.files import atomic_write_text, fields, read_jsonl, str_list
from utils.logs import log

SPLITS = ("train", "validation", "test")


def study_split(data_cfg, test_sources: int, validation_sources: int, seed: int) -> dict[str, list]:
    """(train, validation, test) examples of the base config's data, cut as the module says, and its
    transfer set ("unlabeled": sources, none of them a labeled source)."""
    loaded = load_splits(dataclasses.replace(data_cfg, max_train_samples=None, max_eval_samples=None))
    pooled: dict[str, list[str]] = {}
    for e in loaded.train + loaded.validation + loaded.test:  # separate files may share a source: merge it
        refs = pooled.setdefault(e.source, [])
        refs += [r for r in e.references if r not in refs]
    examples = [Example(s, pooled[s]) for s in sorted(pooled)]
    if len(examples) <= test_sources + validation_sources:
        raise UserError(f"the data has {len(examples):,} distinct sources, not more than test_sources "
                        f"{test_sources:,} + validation_sources {validation_sources:,}; lower them in the study file")
    random.Random(seed).shuffle(examples)
    test, rest = examples[:test_sources], examples[test_sources:]
    transfer = [s for s in unlabeled_sources(data_cfg) if s not in pooled]  # never a test or validation source
    return {"test": test, "validation": rest[:validation_sources], "train": rest[validation_sources:],
            "unlabeled": transfer}


def write_split(split: dict[str, list[Example]], directory: Path) -> dict[str, Path]:
    """Write the split's files (or check that the ones there are the same) and return their paths.

    A study directory whose split was cut from other data or settings is refused: its finished runs
    would be compared with runs on another test set. A damaged file (it does not parse as a split, or
    is cut short) is rebuilt, with a warning: the split is a function of the data and the seeds."""
    texts = split_texts(split)
    rebuild = check_split(split, directory)  # every refusal before the first write
    for name, why in rebuild.items():
        if why != "missing":
            log.warning("study split: %s was damaged (%s); rebuilt it from the data and the study's seeds",
                        Path(directory) / f"{name}.jsonl", why)
        atomic_write_text(Path(directory) / f"{name}.jsonl", texts[name])
    return split_paths(split, directory)


def split_paths(split: dict, directory: Path) -> dict[str, Path]:
    """Where :func:`write_split` puts each file (nothing is written)."""
    return {name: (Path(directory) / f"{name}.jsonl").resolve() for name in split_texts(split)}


def split_texts(split: dict) -> dict[str, str]:
    rows = {name: [{"source": e.source, "references": e.references} for e in split[name]] for name in SPLITS}
    if split.get("unlabeled"):
        rows["unlabeled"] = [{"source": s} for s in split["unlabeled"]]
    return {name: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) for name, records in rows.items()}


def check_split(split: dict, directory: Path) -> dict[str, str]:
    """name -> why its file is to be (re)written ('missing' or its damage), for the files not holding the
    split; refuses a file that parses as a split and holds another one. Writes nothing."""
    rebuild = {}
    for name, text in split_texts(split).items():
        path = Path(directory) / f"{name}.jsonl"
        why = _file_state(path, text, name)
        if why == _OTHER:
            raise UserError(f"{path} holds another split (the data, test_sources, validation_sources or split_seed "
                            f"changed); use another output_dir for this study, or delete {Path(directory).parent}")
        if why:
            rebuild[name] = why
    return rebuild


_OTHER = "another split"


def _file_state(path: Path, text: str, name: str) -> str:
    """'' when ``path`` holds ``text``; else 'missing', what damaged it, or _OTHER."""
    if not path.exists():
        return "missing"
    try:
        old = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text at byte {e.start}"
    if old == text:
        return ""
    if text.startswith(old):
        return "cut short"
    for i, line in enumerate(old.splitlines(), 1):
        try:
            why = _row_problem(json.loads(line), name) if line.strip() else ""
        except (ValueError, RecursionError):
            why = "not JSON"
        if why:
            return f"line {i}: {why}"
    return _OTHER


def _row_problem(row, name: str) -> str:
    if name == "unlabeled":
        return fields(row, source=str) or ("keys other than 'source'" if len(row) != 1 else "")
    return fields(row, source=str, references=str_list) or (
        "keys other than 'source' and 'references'" if len(row) != 2 else "")


def read_split_file(path: Path) -> list[Example]:
    """The examples of a split file written by :func:`write_split` (labeled: train, validation, test)."""
    fix = "delete it and rerun the study: it is rebuilt from the data"
    return [Example(**row) for row in read_jsonl(Path(path), fix, lambda row: _row_problem(row, "test"))]


def data_overrides(paths: dict[str, Path], data_cfg=None) -> list[str]:
    """The --set overrides that point a run at the split files (and at nothing else: the base config's
    own transfer file, if any, is cleared; a method names split/unlabeled.jsonl to use it)."""
    clear = ["data.unlabeled_file=null"] if data_cfg is not None and data_cfg.unlabeled_file else []
    return clear + [f"data.train_file={paths['train']}", f"data.validation_file={paths['validation']}",
            f"data.test_file={paths['test']}", "data.format=auto", "data.encoding=utf-8", "data.strip_quotes=false",
            "data.source_column=source", "data.target_column=references", "data.synthetic=null",
            "data.dataset_name=null", "data.max_eval_samples=null", "data.unlabeled_column=null",
            "benchmark.split=test", "benchmark.max_samples=null"]
