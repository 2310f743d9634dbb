"""The config schema: one dataclass per section, each field documented and validated.

A config file has the sections ``teacher``, ``student``, ``data``, ``training``, ``distill`` and
``benchmark``, each defined in its own module (``settings/<section>_config.py``; the teacher and
the student share ``model_config``) and gathered here in :class:`Config`. Each field carries its
documentation in ``metadata["doc"]`` (rendered into the README by ``python -m settings.reference``);
``__post_init__`` validates values and raises
``ValueError("key: problem")``, which :mod:`settings.loading` turns into a one-line user error
naming the file and the dotted key.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from settings.benchmark_config import MODEL_METRICS, TEXT_METRICS, BenchmarkConfig, ExtraModel  # noqa: F401
from settings.data_config import DataConfig, SyntheticConfig  # noqa: F401
from settings.distill_config import DistillConfig, LossSpec, PseudoLabelConfig, TeacherCacheConfig  # noqa: F401
from settings.fields import MAX_PARAMETERS, MAX_TOKENS, doc  # noqa: F401
from settings.model_config import (ArchConfig, ModelConfig, NarrowConfig, TokenizerConfig,  # noqa: F401
                                   TokenizerTrainConfig)
from settings.training_config import BEST_METRICS, OptimConfig, TrainingConfig  # noqa: F401

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.json"


@dataclass
class Config:
    """The whole run."""

    teacher: ModelConfig = doc("The teacher model.", factory=lambda: ModelConfig(name_or_path="t5-base"))
    student: ModelConfig = doc("The student model.", factory=lambda: ModelConfig(name_or_path="t5-small"))
    data: DataConfig = doc("Training and evaluation data.", factory=DataConfig)
    training: TrainingConfig = doc("Optimisation and run settings.", factory=TrainingConfig)
    distill: DistillConfig = doc("The student's objective.", factory=DistillConfig)
    benchmark: BenchmarkConfig = doc("Benchmark settings.", factory=BenchmarkConfig)

    def __post_init__(self):
        syn = self.data.synthetic
        for key, on in (("unlabeled_file", self.data.unlabeled_file),
                        ("synthetic.unlabeled_examples", syn and syn.unlabeled_examples)):
            if on and self.distill.pseudo_labels is None:
                raise ValueError(f"data.{key}: sources without references are labelled by the teacher; set "
                                 f"distill.pseudo_labels (e.g. {{num_beams: 4}}) or remove data.{key}")
        if self.distill.teacher_cache is not None and self.training.student.autoencode_steps:
            raise ValueError("training.student.autoencode_steps: the teacher cache holds the teacher's outputs for "
                             "the training pairs only, not for (source, source) copies; set it to 0 or drop "
                             "distill.teacher_cache")
        if self.teacher.init == "shrink":
            raise ValueError("teacher.init: 'shrink' is for the student (it copies layers from the teacher)")
        if self.student.kind == "causal":
            raise ValueError("student.kind: the student is a seq2seq model; 'causal' is for the teacher")
        for role in ("teacher", "student"):
            m = getattr(self, role)
            if m.init == "scratch" and m.arch.type == "bart":
                check_positions(self, m.arch.max_positions, f"{role}.arch.max_positions",
                                "raise max_positions or lower")


def check_positions(cfg: Config, limit: int, owner: str, fix: str) -> None:
    """Learned position tables (BART) cannot index past their ``limit``: refuse lengths that do
    not fit (T5's relative positions have no limit). ``owner`` names the limit, ``fix`` starts the fix."""
    on_policy = cfg.distill.on_policy
    sampled = on_policy.max_new_tokens if on_policy is not None and on_policy.max_new_tokens else 0
    for key, n in (("data.max_source_length", cfg.data.max_source_length),
                   ("data.max_target_length", cfg.data.max_target_length),
                   ("benchmark.max_new_tokens", cfg.benchmark.max_new_tokens + 1),
                   ("distill.on_policy.max_new_tokens", sampled + 1)):
        if n > limit:
            raise ValueError(f"{owner}: {limit} positions cannot hold {key} ({n}); {fix} {key}")
