"""A run's context: options, directories, device and precision, logging, the layout check, the job of a stage."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from settings import Config, save_config, to_dict
from settings.paths import check_path_kinds
from settings.schema import check_positions as check_lengths
from data_loader import Seq2SeqCollator, Splits, load_splits, training_pairs, unlabeled_sources
from training import TrainJob
from training.checkpointing import config_section
from utils import distributed as dist
from utils.errors import UserError
from utils.files import ensure_writable_dir
from utils.logs import attach_log_file, log, setup_logging
from utils.runtime import resolve_device, resolve_precision

if TYPE_CHECKING:  # annotations only: stages imports this module
    from pipeline.stages import Stage


@dataclass(frozen=True)
class RunOptions:
    """What a run is asked to do beyond its config (the command-line flags that are not config values)."""

    resume: str | None = None        # a checkpoint file, or "auto": the newest of the stage's checkpoints
    overwrite: bool = False          # replace an earlier run's results (only once the new ones are complete)
    teacher_path: str | None = None  # a trained teacher directory to distill from or benchmark
    student_path: str | None = None  # a trained student directory to benchmark


@dataclass
class Run:
    """Per-process context shared by the stages of one invocation."""

    cfg: Config
    opts: RunOptions
    output_dir: Path
    checkpoint_dir: Path
    device: torch.device
    precision: object
    log_file: Path
    defer_replace: bool = False  # full_pipeline replaces both models only once both are trained
    renewing: bool = False       # full_pipeline resumes an --overwrite: every stage without a new result trains one
    _splits: Splits | None = field(default=None, repr=False)
    _unlabeled: list[str] | None = field(default=None, repr=False)

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_splits(self.cfg.data)
        return self._splits

    @property
    def unlabeled(self) -> list[str]:
        """The transfer set's sources (data.unlabeled_file, or the synthetic task's)."""
        if self._unlabeled is None:
            self._unlabeled = unlabeled_sources(self.cfg.data)
        return self._unlabeled

    def tokenizer_texts(self) -> list[str]:
        """Texts a tokenizer is trained on: prefixed sources and every reference of the training split."""
        prefix = self.cfg.data.prefix
        return [prefix + e.source for e in self.splits.train] + [r for e in self.splits.train for r in e.references]

    def collator(self, tokenizer) -> Seq2SeqCollator:
        d = self.cfg.data
        return Seq2SeqCollator(tokenizer, d.prefix, d.max_source_length, d.max_target_length)


def start(cfg: Config, opts: RunOptions) -> Run:
    """Resolve directories, device and precision; set up logging."""
    t = cfg.training
    check_path_kinds(cfg, {"--teacher_path": ("model dir", opts.teacher_path),
                           "--student_path": ("model dir", opts.student_path),
                           "--resume_from_checkpoint": ("file", None if opts.resume == "auto" else opts.resume)})
    out, ckpt = Path(t.output_dir), Path(t.checkpoint_dir or Path(t.output_dir) / "checkpoints")
    logs = Path(t.log_dir or out / "logs")
    check_layout(out, ckpt, logs)
    out = ensure_writable_dir(out, "output_dir")
    ckpt = ensure_writable_dir(ckpt, "checkpoint_dir")
    logs = ensure_writable_dir(logs, "log_dir")
    device = dist.setup(resolve_device(t.device), t.rendezvous_timeout)  # under torchrun: join the ranks
    setup_logging()
    precision = resolve_precision(t.precision, device)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    _quiet_transformers()
    return Run(cfg, opts, out, ckpt, device, precision, logs / "run.log")


def check_layout(out: Path, ckpt: Path, logs: Path) -> None:
    """What a run writes under its directories must not exist as the other kind (a file where a
    stage keeps its directory, a directory where a report goes)."""
    roles = [r + suffix for r in ("teacher", "student", BASELINE) for suffix in ("", NEW, ".old")]
    dirs = [out / r for r in roles] + [ckpt / r for r in roles] + [out / "teacher_cache", out / "pseudo_labels",
                                                                  out / "plots"]
    files = [logs / "run.log", out / "config.resolved.json"] + [out / name for name in REPORTS] + \
        [out / r / name for r in roles for name in ("metrics.jsonl", "training_summary.json")] + \
        list(out.glob("predictions_*.jsonl")) + list((out / "plots").glob("*.png"))
    for path in dirs:
        if path.is_file():
            raise UserError(f"{path} is a file where the run keeps a directory; move it away or choose another "
                            f"--output_dir")
    for path in files:
        if path.is_dir():
            raise UserError(f"{path} is a directory where the run writes a file; move it away or choose another "
                            f"--output_dir")


REPORTS = ("benchmark_results.json", "comparison_table.csv", "benchmark_report.txt")


def _quiet_transformers():
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def record_run(run: Run, what: str, save: bool = True) -> None:
    """Write the resolved config next to the results and log one summary line that names the file."""
    attach_log_file(run.log_file)
    path = run.output_dir / "config.resolved.json"
    if save and dist.is_main():
        save_config(run.cfg, path)
    log.info("%s in %s (device %s, precision %s): teacher %s, student %s, data %s; resolved config in %s", what,
             run.output_dir.resolve(), run.device, run.precision.name, _model_summary(run.cfg.teacher),
             _model_summary(run.cfg.student), _data_summary(run.cfg.data), path.resolve())


def _model_summary(m) -> str:
    if m.init == "pretrained":
        return m.name_or_path
    a = m.arch
    layers = f"{a.encoder_layers}+{a.decoder_layers} layers"
    if m.init == "shrink":
        return f"shrink ({layers}{''.join(f', {k} {v}' for k, v in narrow_width(m).items())})"
    return f"{m.init} {a.type} (d_model {a.d_model}, {layers})"


def _data_summary(d) -> str:
    return d.train_file or d.dataset_name or f"synthetic {d.synthetic.task}"


def check_positions(model, cfg: Config, role: str) -> None:
    """A loaded model's position table must hold the configured lengths (see settings.schema.check_positions)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None:  # T5: relative positions, any length
        try:
            check_lengths(cfg, limit, f"the {role} model", "lower")
        except ValueError as e:
            raise UserError(str(e)) from None


def make_job(run: Run, role: str, tokenizer, stage: Stage, **extra) -> TrainJob:
    cfg = run.cfg
    splits = run.splits
    if not splits.train:
        raise UserError("data: the training split is empty; add data or raise data.split_ratios[0]")
    return TrainJob(role=role, optim=getattr(cfg.training, config_section(role)),
                    train_pairs=training_pairs(splits.train, cfg.data.train_on_all_references),
                    val_examples=splits.validation, collator=run.collator(tokenizer), run_dir=stage.run_dir,
                    checkpoint_dir=stage.checkpoint_dir, device=run.device, precision=run.precision, seed=cfg.training.seed,
                    config=to_dict(cfg), generation=cfg.benchmark, chunk_size=cfg.distill.chunk_size,
                    compile_chunks=cfg.distill.compile_chunks, **extra)


NEW = ".new"  # suffix of the directories a stage that replaces an earlier result trains into
BASELINE = "student_ce"  # the stage of the CE-only student (training.baseline): pipeline/baseline.py


def narrow_width(m) -> dict:
    """``student.narrow`` as shrink keywords: the widths that are set."""
    return {k: v for k, v in asdict(m.narrow).items() if v is not None} if m.narrow else {}
