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

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from config import Config, save_config, to_dict
from data_loader import Seq2SeqCollator, Splits, load_splits, training_pairs
from distiller_zoo import LossConfigError, Objective, build_loss
from models import build_model, load_saved, load_tokenizer, same_vocabulary, shrink_model
from training import Trainer, TrainJob, latest_checkpoint
from utils import UserError, ensure_writable_dir, log, resolve_device, resolve_precision, set_seed, setup_logging


@dataclass
class Run:
    """Per-process context shared by the stages of one invocation."""

    cfg: Config
    args: object
    output_dir: Path
    checkpoint_dir: Path
    device: torch.device
    precision: object
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
    """Resolve directories, device and precision; set up logging; write the resolved config."""
    t = cfg.training
    out = ensure_writable_dir(t.output_dir, "output_dir")
    ckpt = ensure_writable_dir(t.checkpoint_dir or out / "checkpoints", "checkpoint_dir")
    logs = ensure_writable_dir(t.log_dir or out / "logs", "log_dir")
    setup_logging(logs / "run.log")
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    save_config(cfg, out / "config.resolved.json")
    log.info("run directory %s (device %s, precision %s)", out.resolve(), device, precision.name)
    _quiet_transformers()
    return Run(cfg, args, out, ckpt, device, precision)


def _quiet_transformers():
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------- stage helpers
def prepare_stage(run: Run, role: str) -> tuple[Path, Path, Path | None]:
    """(run_dir, checkpoint_dir, checkpoint to resume) for a training stage; guards earlier results."""
    run_dir, ckpt_dir = run.output_dir / role, run.checkpoint_dir / role
    resume = run.args.resume_from_checkpoint
    if resume and resume != "auto":
        resume_path = Path(resume)
        if not resume_path.is_file():
            raise UserError(f"--resume_from_checkpoint {resume}: no such checkpoint file (use a step_*.pt file "
                            f"from {ckpt_dir} or 'auto')")
    else:
        resume_path = latest_checkpoint(ckpt_dir) if resume == "auto" else None
    if resume_path is None and not run.args.overwrite and _has_results(run_dir, ckpt_dir):
        raise UserError(f"{run_dir} already holds a {role} run; pass --resume_from_checkpoint auto to continue it, "
                        f"--overwrite to replace it, or another --output_dir")
    if resume_path is None and run.args.overwrite:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, ckpt_dir, resume_path


def _has_results(run_dir: Path, ckpt_dir: Path) -> bool:
    return (run_dir / "final").exists() or (ckpt_dir.exists() and any(ckpt_dir.glob("*.pt")))


def make_job(run: Run, role: str, tokenizer, run_dir: Path, ckpt_dir: Path, **extra) -> TrainJob:
    cfg = run.cfg
    splits = run.splits
    if not splits.train:
        raise UserError("data: the training split is empty; add data or raise data.split_ratios[0]")
    return TrainJob(role=role, optim=getattr(cfg.training, role),
                    train_pairs=training_pairs(splits.train, cfg.data.train_on_all_references),
                    val_examples=splits.validation, collator=run.collator(tokenizer), run_dir=run_dir,
                    checkpoint_dir=ckpt_dir, device=run.device, precision=run.precision, seed=cfg.training.seed,
                    config=to_dict(cfg), generation=cfg.benchmark, **extra)


# --------------------------------------------------------------------------- modes
def train_teacher(cfg: Config, args, run: Run | None = None) -> Path:
    """Train the teacher with cross-entropy; returns <output_dir>/teacher/final."""
    run = run or start(cfg, args)
    run_dir, ckpt_dir, resume = prepare_stage(run, "teacher")
    set_seed(cfg.training.seed)
    tok = load_tokenizer(cfg.teacher.tokenizer, cfg.teacher.name_or_path,
                         run.tokenizer_texts() if cfg.teacher.tokenizer.train else None)
    model = build_model(cfg.teacher, tok)
    final = Trainer(make_job(run, "teacher", tok, run_dir, ckpt_dir), model, tok).train(resume)
    log.info("teacher exported to %s", final)
    return final


def distill_student(cfg: Config, args, run: Run | None = None, teacher_path: Path | None = None) -> Path:
    """Distill the student from a trained teacher; returns <output_dir>/student/final."""
    run = run or start(cfg, args)
    objective = build_objective(cfg)  # a wrong loss option fails before a large teacher is loaded
    attentions = "attentions" in objective.requires
    teacher, t_tok = load_teacher(run, teacher_path, attentions)
    run_dir, ckpt_dir, resume = prepare_stage(run, "student")
    set_seed(cfg.training.seed)
    student, s_tok = build_student(run, teacher, t_tok, attentions)
    if not same_vocabulary(s_tok, t_tok):
        raise UserError("teacher and student tokenizers have different vocabularies, so their outputs cannot be "
                        "compared token by token; give the student the teacher's tokenizer (student.tokenizer = "
                        "teacher.tokenizer, or student.init shrink) or use cross-tokenizer distillation")
    objective.vocab_size = len(s_tok)
    try:
        objective.bind(student.config, teacher.config)
    except ValueError as e:
        raise UserError(f"distill.losses: {e}") from None
    job = make_job(run, "student", s_tok, run_dir, ckpt_dir, objective=objective, teacher=teacher)
    final = Trainer(job, student, s_tok).train(resume)
    log.info("student exported to %s", final)
    return final


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


def load_teacher(run: Run, teacher_path: Path | None, attentions: bool = False):
    """The teacher to distill from: --teacher_path, this run's trained teacher, or a pretrained one."""
    path = teacher_path or run.args.teacher_path
    trained = run.output_dir / "teacher" / "final"
    if path is None and trained.is_dir():
        path = trained
    if path is not None:
        log.info("teacher: %s", path)
        return load_saved(path, "--teacher_path", attentions)
    if run.cfg.teacher.init == "pretrained":
        tok = load_tokenizer(run.cfg.teacher.tokenizer, run.cfg.teacher.name_or_path)
        return build_model(run.cfg.teacher, tok, attentions), tok
    raise UserError(f"distill_student needs a trained teacher: run --mode train_teacher first (it writes {trained}), "
                    f"pass --teacher_path DIR, or set teacher.init pretrained with a name_or_path")


def benchmark(cfg: Config, args, run: Run | None = None, paths: dict | None = None) -> dict:
    """Score and time the available models; writes the three report files into output_dir."""
    from benchmark import BenchModel, run_benchmark
    run = run or start(cfg, args)
    models = []
    for role in ("teacher", "student"):
        found = _find_model(run, role, (paths or {}).get(role))
        if found is not None:
            model, tok, path = found
            models.append(BenchModel(role, model, tok, path))
    if not models:
        raise UserError("benchmark: no model to evaluate; pass --teacher_path and/or --student_path, or run "
                        "train_teacher / distill_student into this --output_dir first")
    return run_benchmark(models, run)


def _find_model(run: Run, role: str, path):
    path = path or getattr(run.args, f"{role}_path", None)
    trained = run.output_dir / role / "final"
    if path is None and trained.is_dir():
        path = trained
    if path is not None:
        model, tok = load_saved(path, f"--{role}_path")
        return model, tok, Path(path)
    mcfg = getattr(run.cfg, role)
    if mcfg.init == "pretrained" and mcfg.name_or_path and getattr(run.args, "mode", None) == "benchmark":
        tok = load_tokenizer(mcfg.tokenizer, mcfg.name_or_path)
        return build_model(mcfg, tok), tok, None
    return None


def full_pipeline(cfg: Config, args) -> dict:
    """train_teacher -> distill_student -> benchmark in one run directory.

    With --resume_from_checkpoint auto, a stage whose final model already exists is skipped."""
    run = start(cfg, args)
    auto = args.resume_from_checkpoint == "auto"
    if args.resume_from_checkpoint not in (None, "auto"):
        raise UserError("full_pipeline resumes with --resume_from_checkpoint auto (it finds each stage's checkpoint)")
    teacher_final = Path(args.teacher_path) if args.teacher_path else run.output_dir / "teacher" / "final"
    if not cfg.training.train_teacher:
        teacher_final = args.teacher_path  # None: distill from teacher.name_or_path as it is
    elif not args.teacher_path and not (auto and teacher_final.is_dir()):
        teacher_final = train_teacher(cfg, args, run)
    student_final = run.output_dir / "student" / "final"
    if not (auto and student_final.is_dir()):
        student_final = distill_student(cfg, args, run, teacher_final)
    return benchmark(cfg, args, run, {"teacher": teacher_final, "student": student_final})


MODES = {
    "train_teacher": train_teacher,
    "distill_student": distill_student,
    "benchmark": benchmark,
    "full_pipeline": full_pipeline,
}
