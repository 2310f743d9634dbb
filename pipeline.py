"""The four modes, as plain functions listed in :data:`MODES`.

Run directory layout (``training.output_dir``)::

    config.resolved.json          the config every stage ran with
    logs/run.log                  timestamped log of every stage
    teacher/final/                exported teacher (safetensors + tokenizer)
    teacher/metrics.jsonl         training log records
    student/final/  student/metrics.jsonl
    checkpoints/teacher/ checkpoints/student/   step_*.pt, best.pt
    benchmark_results.json  comparison_table.csv  benchmark_report.txt  predictions_<model>.jsonl
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from config import Config, save_config, to_dict
from data_loader import Seq2SeqCollator, Splits, load_splits, training_pairs
from distiller_zoo import LossConfigError, Objective, build_loss
from models import build_model, load_saved, load_tokenizer, same_vocabulary, shrink_model
from pseudo_labels import pseudo_label_pairs
from checkpoints import latest_checkpoint
from training import Trainer, TrainJob
from utils import (UserError, attach_log_file, ensure_writable_dir, log, resolve_device, resolve_precision, set_seed,
                   setup_logging)


@dataclass
class Run:
    """Per-process context shared by the stages of one invocation."""

    cfg: Config
    args: object
    output_dir: Path
    checkpoint_dir: Path
    device: torch.device
    precision: object
    log_file: Path
    _splits: Splits | None = field(default=None, repr=False)

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_splits(self.cfg.data)
        return self._splits

    def tokenizer_texts(self) -> list[str]:
        """Texts a tokenizer is trained on: prefixed sources and every reference of the training split."""
        prefix = self.cfg.data.prefix
        return [prefix + e.source for e in self.splits.train] + [r for e in self.splits.train for r in e.references]

    def collator(self, tokenizer) -> Seq2SeqCollator:
        d = self.cfg.data
        return Seq2SeqCollator(tokenizer, d.prefix, d.max_source_length, d.max_target_length)


def start(cfg: Config, args) -> Run:
    """Resolve directories, device and precision; set up logging."""
    t = cfg.training
    out = ensure_writable_dir(t.output_dir, "output_dir")
    ckpt = ensure_writable_dir(t.checkpoint_dir or out / "checkpoints", "checkpoint_dir")
    logs = ensure_writable_dir(t.log_dir or out / "logs", "log_dir")
    setup_logging()
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    _quiet_transformers()
    return Run(cfg, args, out, ckpt, device, precision, logs / "run.log")


def _quiet_transformers():
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------- stage helpers
@dataclass
class Stage:
    """A training stage's directories and the checkpoint it resumes from (if any)."""

    role: str
    run_dir: Path
    checkpoint_dir: Path
    resume: Path | None


def prepare_stage(run: Run, role: str) -> Stage:
    """Find the checkpoint to resume and refuse to touch earlier results; writes nothing."""
    run_dir, ckpt_dir = run.output_dir / role, run.checkpoint_dir / role
    resume = run.args.resume_from_checkpoint
    if resume and resume != "auto":
        resume_path = Path(resume)
        if not resume_path.is_file():
            raise UserError(f"--resume_from_checkpoint {resume}: no such checkpoint file (use a step_*.pt file "
                            f"from {ckpt_dir} or 'auto')")
    else:
        resume_path = latest_checkpoint(ckpt_dir) if resume == "auto" else None
    if resume == "auto" and resume_path is None and any(ckpt_dir.glob("step_*.pt")):
        raise UserError(f"--resume_from_checkpoint auto: every checkpoint in {ckpt_dir} is truncated or corrupt; "
                        f"pass an older one explicitly, or --overwrite to start this stage over")
    if resume_path is None and not run.args.overwrite and _has_results(run_dir, ckpt_dir):
        raise UserError(f"{run_dir} already holds a {role} run; pass --resume_from_checkpoint auto to continue it, "
                        f"--overwrite to replace it, or another --output_dir")
    return Stage(role, run_dir, ckpt_dir, resume_path)


def commit_stage(run: Run, stage: Stage) -> None:
    """Every check passed: now clear what --overwrite replaces, create the directories, start the
    log file and record the resolved config. Nothing earlier is touched before this point."""
    if stage.resume is None and run.args.overwrite:
        shutil.rmtree(stage.run_dir, ignore_errors=True)
        shutil.rmtree(stage.checkpoint_dir, ignore_errors=True)
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    stage.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    record_run(run, f"{stage.role} stage")


def record_run(run: Run, what: str) -> None:
    attach_log_file(run.log_file)
    save_config(run.cfg, run.output_dir / "config.resolved.json")
    log.info("%s in %s (device %s, precision %s); resolved config: %s", what, run.output_dir.resolve(), run.device,
             run.precision.name, json.dumps(to_dict(run.cfg), separators=(",", ":")))


def _has_results(run_dir: Path, ckpt_dir: Path) -> bool:
    return (run_dir / "final").exists() or (ckpt_dir.exists() and any(ckpt_dir.glob("*.pt")))


def check_positions(model, cfg: Config, role: str) -> None:
    """Learned position tables (BART) cannot index past their size: refuse lengths that do not fit."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None:  # T5: relative positions, any length
        return
    for key, n in (("data.max_source_length", cfg.data.max_source_length),
                   ("data.max_target_length", cfg.data.max_target_length),
                   ("benchmark.max_new_tokens", cfg.benchmark.max_new_tokens + 1)):
        if n > limit:
            raise UserError(f"{key} ({n}) exceeds the {role} model's {limit} positions; lower {key}")


def make_job(run: Run, role: str, tokenizer, stage: Stage, **extra) -> TrainJob:
    cfg = run.cfg
    splits = run.splits
    if not splits.train:
        raise UserError("data: the training split is empty; add data or raise data.split_ratios[0]")
    return TrainJob(role=role, optim=getattr(cfg.training, role),
                    train_pairs=training_pairs(splits.train, cfg.data.train_on_all_references),
                    val_examples=splits.validation, collator=run.collator(tokenizer), run_dir=stage.run_dir,
                    checkpoint_dir=stage.checkpoint_dir, device=run.device, precision=run.precision, seed=cfg.training.seed,
                    config=to_dict(cfg), generation=cfg.benchmark, chunk_size=cfg.distill.chunk_size, **extra)


# --------------------------------------------------------------------------- modes
def train_teacher(cfg: Config, args, run: Run | None = None) -> Path:
    """Train the teacher with cross-entropy; returns <output_dir>/teacher/final."""
    run = run or start(cfg, args)
    stage = prepare_stage(run, "teacher")
    set_seed(cfg.training.seed)
    tok = load_tokenizer(cfg.teacher.tokenizer, cfg.teacher.name_or_path,
                         run.tokenizer_texts() if cfg.teacher.tokenizer.train else None)
    model = build_model(cfg.teacher, tok)
    check_positions(model, cfg, "teacher")
    return run_stage(run, stage, Trainer(make_job(run, "teacher", tok, stage), model, tok))


def run_stage(run: Run, stage: Stage, trainer: Trainer) -> Path:
    """Load the checkpoint (a mismatch is refused before anything is written), then train."""
    if stage.resume is not None:
        trainer.load_checkpoint(stage.resume)
    commit_stage(run, stage)
    final = trainer.train()
    log.info("%s exported to %s", stage.role, final)
    return final


def distill_student(cfg: Config, args, run: Run | None = None, teacher_path: Path | str | None = None) -> Path:
    """Distill the student from a trained teacher; returns <output_dir>/student/final."""
    run = run or start(cfg, args)
    objective = build_objective(cfg)  # a wrong loss option fails before a large teacher is loaded
    if cfg.distill.teacher_cache is not None and objective.requires - {"logits"}:
        raise UserError("distill.teacher_cache keeps the teacher's logits only; hidden-state and attention losses "
                        "need the live teacher: remove distill.teacher_cache or those losses")
    attentions = "attentions" in objective.requires
    stage = prepare_stage(run, "student")  # refuse before a large teacher is loaded
    found = resolve_model(run, "teacher", teacher_path, attentions)
    if found is None:
        raise UserError(f"distill_student needs a trained teacher: run --mode train_teacher first (it writes "
                        f"{run.output_dir / 'teacher' / 'final'}), pass --teacher_path DIR, or set teacher.init "
                        f"pretrained with a name_or_path")
    teacher, t_tok, _ = found
    set_seed(cfg.training.seed)
    student, s_tok = build_student(run, teacher, t_tok, attentions)
    check_positions(teacher, cfg, "teacher")
    check_positions(student, cfg, "student")
    if not same_vocabulary(s_tok, t_tok):
        raise UserError("teacher and student tokenizers have different vocabularies, so their outputs cannot be "
                        "compared token by token; give the student the teacher's tokenizer (student.tokenizer = "
                        "teacher.tokenizer, or student.init shrink) or use cross-tokenizer distillation")
    objective.vocab_size = len(s_tok)
    try:
        objective.bind(student.config, teacher.config)
    except ValueError as e:
        raise UserError(f"distill.losses: {e}") from None
    job = make_job(run, "student", s_tok, stage, objective=objective, teacher=teacher)
    if cfg.distill.pseudo_labels is not None:  # sequence-level KD: the teacher's outputs are the data
        job.train_pairs = pseudo_label_pairs(run, teacher.to(run.device), t_tok)  # before a cache covers the pairs
    if (tc := cfg.distill.teacher_cache) is not None:  # the teacher runs once over the pairs, then never again
        from distiller_zoo.cache import open_cache
        job.teacher = open_cache(Path(tc.dir or run.output_dir / "teacher_cache"), teacher, s_tok, job.train_pairs,
                                 job.collator, tc.top_k, objective.temperatures(), len(s_tok), run.device, log)
        del teacher, found
    return run_stage(run, stage, Trainer(job, student, s_tok))


def build_student(run: Run, teacher, t_tok, attentions: bool):
    """The student model and its tokenizer (the teacher's when shrinking or trained alike)."""
    s = run.cfg.student
    if s.init == "shrink":
        attn = {"attn_implementation": "eager"} if attentions else {}
        return shrink_model(teacher, s.arch.encoder_layers, s.arch.decoder_layers, **attn), t_tok
    same_trained = s.tokenizer == run.cfg.teacher.tokenizer and s.tokenizer.train
    tok = t_tok if same_trained else load_tokenizer(s.tokenizer, s.name_or_path,
                                                    run.tokenizer_texts() if s.tokenizer.train else None)
    return build_model(s, tok, attentions=attentions), tok


def build_objective(cfg: Config) -> Objective:
    terms = []
    for i, spec in enumerate(cfg.distill.losses):
        try:
            terms.append((spec.name, spec.weight, build_loss(spec.name, spec.params)))
        except LossConfigError as e:
            raise UserError(f"distill.losses[{i}]: {e}") from None
    return Objective(cfg.distill.ce_weight, terms)


PRETRAINED = "pretrained"  # a model source meaning "<role>.name_or_path as configured"


def resolve_model(run: Run, role: str, source: Path | str | None = None, attentions: bool = False):
    """(model, tokenizer, directory or None) for ``role``, or None when there is none.

    ``source`` is a directory, :data:`PRETRAINED`, or None for the default order: the
    --teacher_path / --student_path flag, this run's ``<role>/final``, then ``<role>.name_or_path``
    when ``<role>.init`` is pretrained."""
    if source is None:
        source = getattr(run.args, f"{role}_path", None)
    if source is None and (run.output_dir / role / "final").is_dir():
        source = run.output_dir / role / "final"
    if source is not None and source != PRETRAINED:
        log.info("%s: %s", role, source)
        model, tok = load_saved(source, f"--{role}_path", attentions)
        return model, tok, Path(source)
    mcfg = getattr(run.cfg, role)
    if mcfg.init != "pretrained":
        return None
    tok = load_tokenizer(mcfg.tokenizer, mcfg.name_or_path)
    return build_model(mcfg, tok, attentions), tok, None


def benchmark(cfg: Config, args, run: Run | None = None, sources: dict | None = None) -> dict:
    """Score and time the available models; writes the three report files into output_dir."""
    from benchmark import BenchModel, run_benchmark
    from benchmark.core import benchmark_examples
    run = run or start(cfg, args)
    check_reports_free(run)
    models = []
    for role in ("teacher", "student"):
        found = resolve_model(run, role, (sources or {}).get(role))
        if found is not None:
            check_positions(found[0], cfg, role)
            models.append(BenchModel(role, *found))
    for extra in cfg.benchmark.models:
        model, tok = load_saved(extra.path, f"benchmark.models {extra.name!r}")
        check_positions(model, cfg, extra.name)
        models.append(BenchModel(extra.name, model, tok, Path(extra.path)))
    if not models:
        raise UserError("benchmark: no model to evaluate; pass --teacher_path and/or --student_path, or run "
                        "train_teacher / distill_student into this --output_dir first")
    benchmark_examples(run)  # an empty split is refused before anything is replaced
    for old in run.output_dir.glob("predictions_*.jsonl"):
        old.unlink()  # allowed by check_reports_free; stale files of models no longer compared go too
    record_run(run, "benchmark")
    return run_benchmark(models, run)


def check_reports_free(run: Run) -> None:
    """Earlier benchmark reports are replaced only on request (--overwrite, or resuming a pipeline)."""
    if (run.output_dir / "benchmark_results.json").exists() and not (
            run.args.overwrite or run.args.resume_from_checkpoint == "auto"):
        raise UserError(f"{run.output_dir} already holds benchmark reports; pass --overwrite to replace them "
                        f"or choose another --output_dir")


def preflight(run: Run) -> None:
    """Checks that would otherwise fail only after hours of training."""
    build_objective(run.cfg)
    check_reports_free(run)
    split = run.cfg.benchmark.split
    if not getattr(run.splits, split):
        raise UserError(f"benchmark.split {split!r} is empty; adjust data.split_ratios or give data.{split}_file")


def full_pipeline(cfg: Config, args) -> dict:
    """train_teacher -> distill_student -> benchmark in one run directory.

    With --resume_from_checkpoint auto, a stage whose final model already exists is skipped."""
    run = start(cfg, args)
    auto = args.resume_from_checkpoint == "auto"
    if args.resume_from_checkpoint not in (None, "auto"):
        raise UserError("full_pipeline resumes with --resume_from_checkpoint auto (it finds each stage's checkpoint)")
    preflight(run)
    done = {role: run.output_dir / role / "final" for role in ("teacher", "student")}
    if args.teacher_path:
        teacher = Path(args.teacher_path)
    elif not cfg.training.train_teacher:
        teacher = PRETRAINED  # an already fine-tuned teacher, used as it is
    else:
        teacher = done["teacher"] if auto and done["teacher"].is_dir() else train_teacher(cfg, args, run)
    student = done["student"] if auto and done["student"].is_dir() else distill_student(cfg, args, run, teacher)
    return benchmark(cfg, args, run, {"teacher": teacher, "student": student})


MODES = {
    "train_teacher": train_teacher,
    "distill_student": distill_student,
    "benchmark": benchmark,
    "full_pipeline": full_pipeline,
}
