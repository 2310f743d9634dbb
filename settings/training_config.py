"""The training section: run settings and one optimisation block per model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from settings.fields import _choice, _in_range, _positive, _seed, doc


# Validation metrics that can pick the best checkpoint ('bleu' is an alias of 'bleu4').
BEST_METRICS = ("loss", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "bleu1", "bleu2", "bleu3", "bleu4",
                "sacrebleu", "chrf")


@dataclass
class OptimConfig:
    """Optimisation of one model (the teacher's or the student's run)."""

    epochs: int = doc("Passes over the training split (ignored when max_steps is set).", 3)
    max_steps: Optional[int] = doc("Total optimizer steps; overrides epochs.", None)
    batch_size: int = doc("Micro-batch size (examples per forward pass).", 16)
    eval_batch_size: int = doc("Batch size for validation.", 32)
    gradient_accumulation_steps: int = doc("Micro-batches per optimizer step.", 1)
    group_by_length: bool = doc("Batch pairs of similar length together (within a (seed, epoch)-shuffled order, "
                                "batches in random order) to cut padding; the log shows the padding before "
                                "and after.", True)
    autoencode_steps: int = doc("Copy warm-up for models trained from scratch on tasks whose output mostly repeats "
                                "the input (detoxification, paraphrase): during the first N optimizer steps a share "
                                "(autoencode_fraction) of every micro-batch's pairs become (source, source), so the "
                                "model learns to copy before it learns to edit. Which pairs is fixed by (seed, "
                                "epoch); 0 disables.", 0)
    autoencode_fraction: float = doc("Share of the pairs turned into (source, source) during autoencode_steps.", 0.5)
    random_copy_steps: int = doc("Copy pre-training for models trained from scratch: the first N optimizer steps train "
                                 "with cross-entropy alone on copying random_copy_length random vocabulary tokens "
                                 "(every sequence of one length), in place of those steps' training pairs. The ParaDetox "
                                 "teacher (BART 3+3, d256) learns it in ~100 steps, a 2+2 d128 one in ~500 (the log's "
                                 "loss falls to near 0), and keeps it on text, where copying text itself can take "
                                 "thousands of steps (README: the ParaDetox teacher). 0 disables.", 0)
    random_copy_length: int = doc("Tokens per random_copy_steps sequence (special tokens and data.prefix come on top).",
                                  24)
    learning_rate: float = doc("Peak learning rate of AdamW.", 5e-4)
    weight_decay: float = doc("AdamW weight decay (not applied to biases and norms).", 0.01)
    adam_betas: list[float] = doc("AdamW betas.", factory=lambda: [0.9, 0.999])
    scheduler: str = doc("transformers.get_scheduler name: linear, cosine, constant_with_warmup, ...", "linear")
    warmup_ratio: float = doc("Fraction of the total steps used for linear warm-up.", 0.05)
    max_grad_norm: Optional[float] = doc("Clip gradients to this global norm; null disables clipping.", 1.0)
    eval_every: Optional[int] = doc("Validate every N optimizer steps; null validates once per epoch.", None)
    metric_for_best: str = doc("Validation metric that picks the best checkpoint: 'loss' or a generation "
                               "metric such as 'rougeL', 'rouge1', 'bleu', 'sacrebleu'.", "loss")
    eval_generate_samples: int = doc("Validation examples decoded to compute generation metrics "
                                     "(only when metric_for_best is not 'loss').", 200)
    save_total_limit: int = doc("Keep this many most recent step checkpoints (plus the best).", 2)
    log_every: int = doc("Log training loss every N optimizer steps.", 10)

    _SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                   "constant_with_warmup", "inverse_sqrt")

    def __post_init__(self):
        for name, hi in (("epochs", 10**6), ("batch_size", 10**6), ("eval_batch_size", 10**6),
                         ("gradient_accumulation_steps", 10**6), ("save_total_limit", 10**6), ("log_every", None),
                         ("eval_generate_samples", None)):
            _positive(name, getattr(self, name), hi)
        for name, hi in (("max_steps", 10**9), ("eval_every", None)):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name), hi)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        _in_range("weight_decay", self.weight_decay, 0.0, 10.0)
        _in_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _in_range("autoencode_steps", self.autoencode_steps, 0, 10**9)
        _in_range("autoencode_fraction", self.autoencode_fraction, 0.0, 1.0)
        _in_range("random_copy_steps", self.random_copy_steps, 0, 10**9)
        _positive("random_copy_length", self.random_copy_length, 10**6)
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas: need two values in [0, 1), got {self.adam_betas}")
        _choice("scheduler", self.scheduler, self._SCHEDULERS)
        _choice("metric_for_best", self.metric_for_best, BEST_METRICS)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm: must be > 0 or null, got {self.max_grad_norm}")


@dataclass
class TrainingConfig:
    """Run-wide settings and the two optimisation blocks."""

    teacher: OptimConfig = doc("Optimisation of the teacher (train_teacher).", factory=OptimConfig)
    student: OptimConfig = doc("Optimisation of the student (distill_student).", factory=OptimConfig)
    seed: int = doc("Seed for model init, data order and dropout.", 42)
    device: str = doc("'auto' (CUDA when available), 'cpu' or 'cuda'.", "auto")
    precision: str = doc("'auto' (bf16 on CUDA when supported else fp16; fp32 on CPU), 'fp32', 'bf16' or "
                         "'fp16' (with a GradScaler).", "auto")
    output_dir: str = doc("Run directory: models, reports and the resolved config go here.", "runs/default")
    checkpoint_dir: Optional[str] = doc("Checkpoints directory (default: <output_dir>/checkpoints).", None)
    log_dir: Optional[str] = doc("Log directory (default: <output_dir>/logs).", None)
    num_threads: Optional[int] = doc("torch CPU threads (default: torch's choice).", None)
    train_teacher: bool = doc("full_pipeline trains the teacher first; false distills from teacher.name_or_path "
                              "as it is (an already fine-tuned teacher, e.g. a hub summarization model).", True)
    baseline: bool = doc("distill_student and full_pipeline also train the student with cross-entropy only on the "
                         "labeled pairs (stage student_ce: the same initialisation, seed, optimisation and number "
                         "of optimizer steps as the distilled student, no teacher); the benchmark reports the "
                         "distilled student against it with paired intervals. Also --with_baseline.", False)
    rendezvous_timeout: float = doc("Under torchrun: seconds every rank waits for the others to join (a line on "
                                    "stderr names the missing ones) before stopping with an error; the collectives "
                                    "after that wait up to 60 minutes.", 300.0)

    def __post_init__(self):
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads, 4096)
        _seed("seed", self.seed)
        if not 0 < self.rendezvous_timeout <= 86400:  # (also refuses NaN)
            raise ValueError(f"rendezvous_timeout: must be in (0, 86400] seconds, got {self.rendezvous_timeout}")
        for name in ("output_dir", "checkpoint_dir", "log_dir"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                default = "runs/default" if name == "output_dir" else "null (default: under output_dir)"
                raise ValueError(f"{name}: is empty; give a directory (default {default})")
