"""The study file: which project config, which methods, which seeds, how the data is split.

A study file is small; everything about the models, the data and the decoding stays in the
project config it names (``base_config``), which must validate as one. Example
(``configs/studies/synthetic.yaml``)::

    base_config: synthetic_base.yaml
    output_dir: runs/study_synthetic
    seeds: [0]
    test_sources: 150
    validation_sources: 50
    methods:
      vanilla_kd: ["distill.losses=[{name: vanilla_kl, weight: 0.5, temperature: 2.0}]"]

``ce_only`` is never declared: it is the project's own baseline stage (``student_ce``: the
student's initialisation, data order and optimizer steps, cross-entropy alone), trained in the
run of the first declared method of every seed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from settings import doc, from_dict, read_config_file
from settings.loading import _KeyError
from utils.errors import UserError

CE_ONLY = "ce_only"
STUDY_DIR = "{study_dir}"  # placeholder in overrides, replaced by the study's directory
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class StudyConfig:
    """A distillation study: the base project config, the methods compared and the seeds."""

    base_config: str = doc("The project config every run starts from (teacher, student, data, training, distill, "
                           "benchmark); relative to the study file's directory.", "")
    output_dir: str = doc("The study's directory: the split, the teacher, a run directory per method and seed, "
                          "study_results.json and study_table.md. Relative to the working directory.", "runs/study")
    seeds: list[int] = doc("training.seed of the students; every method runs once per seed.", factory=lambda: [0, 1, 2])
    test_sources: int = doc("Distinct sources in the test split (each with all its references).", 1000)
    validation_sources: int = doc("Distinct sources in the validation split.", 500)
    split_seed: int = doc("Seed of the shuffle that cuts the split (random.Random over the sources in sorted order).",
                          0)
    overrides: list[str] = doc("--set overrides applied to every run, the teacher's included, e.g. "
                               "'training.num_threads=1'.", factory=list)
    methods: dict = doc("Method name -> list of --set overrides applied on top of the base config for the "
                        "students, e.g. {vanilla_kd: [\"distill.losses=[{name: vanilla_kl, weight: 0.5}]\"]}. "
                        "'{study_dir}' in a value is replaced by the study's directory. ce_only is implicit "
                        "(the baseline stage student_ce, trained in the first method's runs).", factory=dict)

    def __post_init__(self):
        if not self.base_config:
            raise ValueError("base_config: missing; name the project config the runs start from")
        if not self.output_dir.strip():
            raise ValueError("output_dir: empty; name the study's directory, e.g. runs/study")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(not 0 <= s < 2**32 for s in self.seeds):
            raise ValueError(f"seeds: give distinct seeds in [0, 2^32), got {self.seeds}")
        for name in ("test_sources", "validation_sources"):
            if not 1 <= getattr(self, name) <= 10**7:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not self.methods:
            raise ValueError("methods: declare at least one method (ce_only is implicit), e.g. "
                             "{vanilla_kd: [\"distill.losses=[{name: vanilla_kl, weight: 0.5}]\"]}")
        for name, sets in self.methods.items():
            if name == CE_ONLY:
                raise ValueError(f"methods.{CE_ONLY}: implicit (the project's baseline stage student_ce); remove it")
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"methods: {name!r} is no valid name; use letters, digits, '_', '.', '-'")
            if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
                raise ValueError(f"methods.{name}: expected a list of 'section.key=value' overrides, got {sets!r}")
        for s in self.overrides:
            if not isinstance(s, str) or "=" not in s:
                raise ValueError(f"overrides: expected 'section.key=value' strings, got {s!r}")

    @property
    def method_names(self) -> list[str]:
        """ce_only first, then the declared methods in their order."""
        return [CE_ONLY, *self.methods]


def load_study(path: str | Path) -> tuple[StudyConfig, Path]:
    """The study file as a :class:`StudyConfig` and its base config's path (checked to exist)."""
    path = Path(path)
    raw = read_config_file(path)
    if "teacher" in raw or "training" in raw:
        raise UserError(f"{path}: this is a project config, not a study file; give --config a study file "
                        f"(base_config, methods, seeds: see configs/studies/)")
    try:
        study = from_dict(StudyConfig, raw)
    except _KeyError as e:
        raise UserError(f"{path}: {e.key}: {e.msg}") from None
    base = Path(study.base_config)
    base = base if base.is_absolute() else path.resolve().parent / base
    if base.is_dir() or (base.exists() and not base.is_file()):
        raise UserError(f"{path}: base_config: {base} is {'a directory' if base.is_dir() else 'no regular file'}, "
                        f"not a config file; name the project config (.yaml or .json) the runs start from")
    if not base.is_file():
        raise UserError(f"{path}: base_config: {base} not found; name an existing project config "
                        f"(relative to the study file's directory)")
    return study, base
