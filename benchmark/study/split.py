"""The study's split: every run trains, validates and is tested on the same files.

The base config's data (files, hub dataset or synthetic task) is read by the project's own loader,
so rows are cleaned and grouped by source exactly as a run would (one example per distinct source
with all its references); the examples of all its splits are pooled, sorted by source and shuffled
with ``random.Random(split_seed)``: the first ``test_sources`` are the test split, the next
``validation_sources`` the validation split, the rest the training split. The three are written as
JSON lines (``{"source": ..., "references": [...]}``) into ``<study_dir>/split/`` and every run
reads them through ``data.train_file`` / ``validation_file`` / ``test_file``.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from data_loader import Example, load_splits
from utils.errors import UserError
from utils.files import atomic_write_text

SPLITS = ("train", "validation", "test")


def study_split(data_cfg, test_sources: int, validation_sources: int, seed: int) -> dict[str, list[Example]]:
    """(train, validation, test) examples of the base config's data, cut as the module says."""
    if data_cfg.synthetic is not None and data_cfg.synthetic.unlabeled_examples:
        raise UserError("data.synthetic.unlabeled_examples: a study writes its split to files, where a generated "
                        "transfer set does not go; set it to 0 (give a transfer set as data.unlabeled_file)")
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
    return {"test": test, "validation": rest[:validation_sources], "train": rest[validation_sources:]}


def write_split(split: dict[str, list[Example]], directory: Path) -> dict[str, Path]:
    """Write the split's files (or check that the ones there are the same) and return their paths.

    A study directory whose split was cut from other data or settings is refused: its finished runs
    would be compared with runs on another test set."""
    paths = {}
    for name in SPLITS:
        path = Path(directory) / f"{name}.jsonl"
        text = "".join(json.dumps({"source": e.source, "references": e.references}, ensure_ascii=False) + "\n"
                       for e in split[name])
        if path.exists() and path.read_text(encoding="utf-8") != text:
            raise UserError(f"{path} holds another split (the data, test_sources, validation_sources or split_seed "
                            f"changed); use another output_dir for this study, or delete {directory.parent}")
        if not path.exists():
            atomic_write_text(path, text)
        paths[name] = path.resolve()
    return paths


def read_split_file(path: Path) -> list[Example]:
    """The examples of a split file written by :func:`write_split`."""
    return [Example(**json.loads(line)) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def data_overrides(paths: dict[str, Path]) -> list[str]:
    """The --set overrides that point a run at the split files (and at nothing else)."""
    return [f"data.train_file={paths['train']}", f"data.validation_file={paths['validation']}",
            f"data.test_file={paths['test']}", "data.format=auto", "data.encoding=utf-8",
            "data.source_column=source", "data.target_column=references", "data.synthetic=null",
            "data.dataset_name=null", "data.max_eval_samples=null",
            "benchmark.split=test", "benchmark.max_samples=null"]
