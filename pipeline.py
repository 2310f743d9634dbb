"""The four modes, as plain functions listed in :data:`MODES`.

Run directory layout (``training.output_dir``)::

    config.resolved.json          the config every stage ran with
    logs/run.log                  timestamped log of every stage
    teacher/final/                exported teacher (safetensors + tokenizer)
    teacher/metrics.jsonl         training log records
    student/final/  student/metrics.jsonl
    student_ce/final/             the CE-only baseline student (training.baseline)
    checkpoints/teacher/ checkpoints/student/   step_*.pt, best.pt
    benchmark_results.json  comparison_table.csv  benchmark_report.txt  predictions_<model>.jsonl

``--overwrite`` never deletes an earlier result before its replacement is complete: a stage that
would replace one trains into ``<role>.new`` beside it (``teacher.new/``,
``checkpoints/teacher.new/``) and is renamed into place once it exported its model.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from settings import Config, save_config, to_dict
from settings.loading import resolved_dict
from settings.paths import PATHS, check_path_kinds
from settings.schema import check_positions as check_lengths
from data_loader import Seq2SeqCollator, Splits, load_splits, training_pairs, unlabeled_sources
from distiller_zoo import LossConfigError, Objective, build_loss
from models import (attention_kwargs, build_model, is_causal_lm, load_saved, load_tokenizer, same_vocabulary,
                    scratch_config, shrink_model, shrunk_config)
from generation import sampling_config
from pseudo_labels import pseudo_label_pairs
from checkpoints import config_differences, latest_checkpoint
from training import Trainer, TrainJob
from training.on_policy import OnPolicy
from training.checkpointing import check_total_steps, config_section, read_resumable, total_steps
from utils import distributed as dist
from utils.errors import UserError, one_line
from utils.files import ensure_writable_dir
from utils.logs import attach_log_file, log, setup_logging
from utils.runtime import resolve_device, resolve_precision, set_seed


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


# --------------------------------------------------------------------------- stage helpers
NEW = ".new"  # suffix of the directories a stage that replaces an earlier result trains into


@dataclass
class Stage:
    """A training stage's directories and the checkpoint it resumes from (if any)."""

    role: str
    run_dir: Path         # where this stage writes: <output_dir>/<role>, or <role>.new when it replaces one
    checkpoint_dir: Path
    resume: Path | None
    replaces: bool = False
    finished: bool = False  # resumed with 'auto' after it exported its model: nothing to do


def stage_dirs(run: Run, role: str, new: bool = False) -> tuple[Path, Path]:
    run_dir, ckpt_dir = run.output_dir / role, run.checkpoint_dir / role
    return (_new(run_dir), _new(ckpt_dir)) if new else (run_dir, ckpt_dir)


def _new(path: Path) -> Path:
    return path.with_name(path.name + NEW)


def prepare_stage(run: Run, role: str) -> Stage:
    """Find the checkpoint to resume, check it against the config, and refuse to touch earlier
    results; writes nothing (apart from finishing a replacement that was interrupted after its new
    model was complete). A stage that exported its model is ``finished``: never trained or exported again."""
    resume = run.opts.resume
    if resume == "auto" and (stage_dirs(run, role, new=True)[0] / "final").is_dir():
        replace_stage(run, role)
    run_dir, ckpt_dir = stage_dirs(run, role)
    new_run, new_ckpt = stage_dirs(run, role, new=True)
    if resume == "auto" and (run_dir / "final").is_dir() and not replacing(run, role) and not run.renewing:
        check_unchanged(run, role, ckpt_dir)
        return Stage(role, run_dir, ckpt_dir, None, finished=True)
    if resume and resume != "auto":
        resume_path = Path(resume)
        if not resume_path.is_file():  # missing, a directory, a pipe: check_path_kinds named the kinds
            raise UserError(f"--resume_from_checkpoint {resume}: no such checkpoint file (use a step_*.pt file "
                            f"from {ckpt_dir} or 'auto')")
        replaces = resume_path.resolve().parent == new_ckpt.resolve()
    else:  # an unfinished --overwrite of this stage is what 'auto' continues
        replaces = resume == "auto" and (replacing(run, role) or run.renewing and _has_results(run_dir, ckpt_dir)) \
            or (resume is None and run.opts.overwrite and _has_results(run_dir, ckpt_dir))
        if replaces:
            run_dir, ckpt_dir = new_run, new_ckpt
        resume_path = latest_checkpoint(ckpt_dir) if resume == "auto" else None
    if resume == "auto" and resume_path is None and any(ckpt_dir.glob("step_*.pt")):
        raise UserError(f"--resume_from_checkpoint auto: every checkpoint in {ckpt_dir} is truncated or corrupt; "
                        f"pass an older one explicitly, or --overwrite to start this stage over")
    if resume_path is None and not run.opts.overwrite and _has_results(run_dir, ckpt_dir):
        where = (run_dir, "--output_dir") if (run_dir / "final").exists() else (ckpt_dir, "--checkpoint_dir")
        raise UserError(f"{where[0]} already holds a {role} run; pass --resume_from_checkpoint auto to continue it, "
                        f"--overwrite to replace it, or another {where[1]}")
    if resume_path is not None:  # a refused resume is refused now, before a teacher runs or a file is written
        ckpt, _, _ = read_resumable(resume_path, role, to_dict(run.cfg), dist.world_size(),
                                    new_ckpt if replaces else ckpt_dir)
        if (steps := planned_steps(run, role)) is not None:
            check_total_steps(ckpt, resume_path, steps)
    if resume_path is not None and not replaces and (run_dir / "final").is_dir():
        raise UserError(f"--resume_from_checkpoint {resume}: the {role} stage is finished ({run_dir / 'final'}); "
                        f"resuming would train and export it again: use it as it is, or pass --overwrite "
                        f"without --resume_from_checkpoint to train it anew")
    if replaces:
        run_dir, ckpt_dir = new_run, new_ckpt
    return Stage(role, run_dir, ckpt_dir, resume_path, replaces)


def planned_steps(run: Run, role: str) -> int | None:
    """The optimizer steps the stage will take, when known before a teacher runs (not when pseudo-labels
    decide the pairs, nor for the baseline, whose budget is the distilled student's)."""
    optim = getattr(run.cfg.training, config_section(role))
    if role == BASELINE or (role == "student" and run.cfg.distill.pseudo_labels and not optim.max_steps):
        return None
    pairs = len(training_pairs(run.splits.train, run.cfg.data.train_on_all_references))
    return total_steps(optim, pairs, dist.world_size())[2]


def check_unchanged(run: Run, role: str, ckpt_dir: Path) -> None:
    """A finished stage is used as it is only by a run of the config it was trained with (its newest
    checkpoint's): a changed objective or model is refused, not silently ignored."""
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        read_resumable(last, role, to_dict(run.cfg), dist.world_size(), ckpt_dir)


def finished_stage(stage: Stage) -> Path:
    log.info("%s: finished earlier (%s); nothing to resume", stage.role, stage.run_dir / "final")
    return stage.run_dir / "final"


def commit_stage(run: Run, stage: Stage) -> None:
    """Every check passed: now clear what a fresh start replaces (its own earlier attempt; never a
    complete result), create the directories, start the log file and record the resolved config.
    Under torchrun rank 0 writes, once every rank has made the same checks."""
    dist.barrier()
    if stage.resume is None and run.opts.overwrite and dist.is_main():
        shutil.rmtree(stage.run_dir, ignore_errors=True)
        shutil.rmtree(stage.checkpoint_dir, ignore_errors=True)
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    stage.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    # a replacing stage records its config once its result replaced the earlier one
    record_run(run, f"{stage.role} stage" + (f" (replacing the earlier one once complete, in {stage.run_dir})"
                                             if stage.replaces else ""), save=not stage.replaces)


def replacing(run: Run, role: str) -> bool:
    """Whether a replacement of this stage was started and not swapped in yet."""
    new_run, new_ckpt = stage_dirs(run, role, new=True)
    return new_run.exists() or any(new_ckpt.glob("step_*.pt"))


def replace_stage(run: Run, role: str) -> Path:
    """Swap a complete ``<role>.new`` stage into place (checkpoints, then the model directory);
    returns the final model's directory. Rerun after an interruption, it completes the swap."""
    dist.barrier()  # every rank has looked at the directories before rank 0 moves them
    for cur in reversed(stage_dirs(run, role) if dist.is_main() else ()):
        new = _new(cur)
        if new.exists():
            old = cur.with_name(cur.name + ".old")
            if cur.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(cur, old)
            os.replace(new, cur)
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_main():
        save_config(run.cfg, run.output_dir / "config.resolved.json")
    dist.barrier()
    log.info("%s: the new run replaced the earlier one in %s", role, run.output_dir / role)
    return run.output_dir / role / "final"


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


def _has_results(run_dir: Path, ckpt_dir: Path) -> bool:
    return (run_dir / "final").exists() or (ckpt_dir.exists() and any(ckpt_dir.glob("*.pt")))


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


# --------------------------------------------------------------------------- modes
def train_teacher(cfg: Config, opts: RunOptions = RunOptions(), run: Run | None = None) -> Path:
    """Train the teacher with cross-entropy; returns <output_dir>/teacher/final."""
    run = run or start(cfg, opts)
    if cfg.teacher.init == "pretrained" and is_causal_lm(cfg.teacher.name_or_path, cfg.teacher.kind):
        raise UserError("teacher: a causal LM teacher is distilled from as it is (this tool trains seq2seq models); "
                        "skip train_teacher (training.train_teacher false, or --mode distill_student)")
    stage = prepare_stage(run, "teacher")
    if stage.finished:
        return finished_stage(stage)
    set_seed(cfg.training.seed)
    tok = load_tokenizer(cfg.teacher.tokenizer, cfg.teacher.name_or_path,
                         run.tokenizer_texts() if cfg.teacher.tokenizer.train else None)
    model = build_model(cfg.teacher, tok)
    check_positions(model, cfg, "teacher")
    return run_stage(run, stage, Trainer(make_job(run, "teacher", tok, stage), model, tok))


def run_stage(run: Run, stage: Stage, trainer: Trainer) -> Path:
    """Load the checkpoint (a mismatch is refused before anything is written), train, and put a
    replacing stage's result in place (full_pipeline does that once both models are trained)."""
    if stage.resume is not None:
        trainer.load_checkpoint(stage.resume)
    commit_stage(run, stage)
    try:
        final = trainer.train()
    except BaseException:
        _drop_unresumable(stage)
        raise
    log.info("%s exported to %s", stage.role, final)
    if stage.replaces and not run.defer_replace:
        final = replace_stage(run, stage.role)
    return final


def _drop_unresumable(stage: Stage) -> None:
    """A replacing stage that stopped before its first checkpoint leaves nothing to continue: its
    ``.new`` directories go, so the earlier result stands alone (a fresh stage's are reused anyway)."""
    if stage.replaces and dist.is_main() and not any(stage.checkpoint_dir.glob("step_*.pt")):
        shutil.rmtree(stage.run_dir, ignore_errors=True)
        shutil.rmtree(stage.checkpoint_dir, ignore_errors=True)


def distill_student(cfg: Config, opts: RunOptions = RunOptions(), run: Run | None = None,
                    teacher_path: Path | str | None = None, baseline: bool = True) -> Path:
    """Distill the student from a trained teacher; returns <output_dir>/student/final. With
    training.baseline (and ``baseline``; full_pipeline runs it as a stage of its own), then train the
    CE-only student."""
    run = run or start(cfg, opts)
    baseline = baseline and cfg.training.baseline
    objective = build_objective(cfg)  # a wrong loss option fails before a large teacher is loaded
    on_policy = on_policy_objective(cfg)
    if cfg.distill.teacher_cache is not None and objective.requires - {"logits"}:
        raise UserError("distill.teacher_cache keeps the teacher's logits only; hidden-state and attention losses "
                        "need the live teacher: remove distill.teacher_cache or those losses")
    stage = prepare_stage(run, "student")  # refuse before a large teacher is loaded
    if baseline:
        from baseline import baseline_run
        prepare_stage(baseline_run(run), BASELINE)
    if not stage.finished:  # the data is read (and so checked) before a teacher is loaded
        _ = run.splits, cfg.distill.pseudo_labels and run.unlabeled
        check_on_policy_data(run)
    final = finished_stage(stage) if stage.finished else _distill(run, stage, objective, on_policy, teacher_path)
    if baseline:
        from baseline import train_baseline
        train_baseline(cfg, opts, run, teacher_path)
    return final


def _distill(run: Run, stage: Stage, objective: Objective, on_policy: Objective | None, teacher_path) -> Path:
    """Load the teacher, build the student and its data (pseudo-labels, the teacher cache, on-policy
    samples), train."""
    cfg = run.cfg
    attentions = "attentions" in objective.requires
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
    cross = not same_vocabulary(s_tok, t_tok) or not teacher.config.is_encoder_decoder
    if cross and (objective.requires - {"logits"} or cfg.distill.teacher_cache or cfg.distill.pseudo_labels):
        raise UserError("a teacher with another tokenizer (or a causal one) is aligned with the student by characters "
                        "and answers with its logits only: remove distill.teacher_cache, distill.pseudo_labels and "
                        "hidden-state/attention losses, or give the student the teacher's tokenizer")
    for where, obj in (("distill.losses", objective), ("distill.on_policy.losses", on_policy)):
        if obj is not None:
            obj.vocab_size = len(s_tok)
            try:
                obj.bind(student.config, teacher.config)
            except ValueError as e:
                raise UserError(f"{where}: {e}") from None
    job = make_job(run, "student", s_tok, stage, objective=objective, teacher=teacher,
                   on_policy=on_policy and build_on_policy(run, on_policy, student, s_tok))
    if cross:  # another tokenizer or a causal teacher: aligned by characters (distiller_zoo.cross_teacher)
        from distiller_zoo.cross_teacher import cross_tokenizer_source
        job.collator, job.teacher = cross_tokenizer_source(teacher, t_tok, s_tok, job.collator, job.train_pairs,
                                                           cfg.teacher.prompt_template, log)
    if cfg.distill.pseudo_labels is not None:  # sequence-level KD: the teacher's outputs are the data
        with dist.main_first():  # rank 0 decodes; the other ranks then read its shards
            job.train_pairs = pseudo_label_pairs(run, teacher.to(run.device), t_tok)  # before a cache covers them
    if (tc := cfg.distill.teacher_cache) is not None:  # the teacher runs once over the pairs, then never again
        from distiller_zoo.cache import open_cache
        with dist.main_first():  # built once, by rank 0
            job.teacher = open_cache(Path(tc.dir or run.output_dir / "teacher_cache"), teacher, s_tok,
                                     job.train_pairs, job.collator, tc.top_k, objective.temperatures(), len(s_tok),
                                     run.device, log)
        del teacher, found
    return run_stage(run, stage, Trainer(job, student, s_tok))


BASELINE = "student_ce"  # the stage of the CE-only student (training.baseline): baseline.py


def narrow_width(m) -> dict:
    """``student.narrow`` as shrink keywords: the widths that are set."""
    return {k: v for k, v in asdict(m.narrow).items() if v is not None} if m.narrow else {}


def build_student(run: Run, teacher, t_tok, attentions: bool):
    """The student model and its tokenizer (the teacher's when shrinking or trained alike)."""
    s = run.cfg.student
    if s.init == "shrink":
        attn = attention_kwargs(attentions)
        return shrink_model(teacher, s.arch.encoder_layers, s.arch.decoder_layers, **narrow_width(s), **attn), t_tok
    same_trained = s.tokenizer == run.cfg.teacher.tokenizer and s.tokenizer.train
    tok = t_tok if same_trained else load_tokenizer(s.tokenizer, s.name_or_path,
                                                    run.tokenizer_texts() if s.tokenizer.train else None)
    return build_model(s, tok, attentions=attentions), tok


def build_objective(cfg: Config) -> Objective:
    return _objective(cfg.distill.losses, cfg.distill.ce_weight, "distill.losses")


def on_policy_objective(cfg: Config) -> Objective | None:
    """The objective of the on-policy micro-batches: the divergences alone, no cross-entropy."""
    if cfg.distill.on_policy is None:
        return None
    objective = _objective(cfg.distill.on_policy.losses, 0.0, "distill.on_policy.losses")
    objective.prefix = "op_"
    if objective.requires - {"logits"}:
        raise UserError("distill.on_policy.losses: only logit losses score the student's samples; move hidden-state "
                        "and attention losses to distill.losses")
    return objective


def _objective(specs, ce_weight: float, where: str) -> Objective:
    terms = []
    for i, spec in enumerate(specs):
        try:
            terms.append((spec.name, spec.weight, build_loss(spec.name, spec.params)))
        except LossConfigError as e:
            raise UserError(f"{where}[{i}]: {e}") from None
    return Objective(ce_weight, terms)


def check_on_policy_data(run: Run) -> None:
    """The on-policy settings that depend on the data: a replay buffer of at most one sample per
    training source (more would keep several samples of a source, the older ones from a student
    epochs behind), and a validation split for the adaptive share (it moves only at validations)."""
    op = run.cfg.distill.on_policy
    if op is None:
        return
    if op.adaptive and not run.splits.validation:
        raise UserError("distill.on_policy.adaptive: the share rises only at validations and the validation split "
                        "is empty; give data.validation_file or a validation share in data.split_ratios, or set "
                        "adaptive false")
    sources = len({e.source for e in run.splits.train} | set(run.unlabeled if run.cfg.distill.pseudo_labels else []))
    if op.replay is not None and op.replay.size > sources:
        raise UserError(f"distill.on_policy.replay.size {op.replay.size:,} is larger than the data ({sources:,} "
                        f"training sources: it would hold stale samples of the same sources); set it to at most "
                        f"{sources:,}")


def build_on_policy(run: Run, objective: Objective, student, tokenizer) -> OnPolicy:
    op = run.cfg.distill.on_policy
    gen = sampling_config(op, op.max_new_tokens or run.cfg.data.max_target_length, run.cfg.benchmark, student,
                          tokenizer)
    return OnPolicy(op, student, objective.to(run.device), run.cfg.training.seed, run.device, run.precision, gen)


PRETRAINED = "pretrained"  # a model source meaning "<role>.name_or_path as configured"


def resolve_model(run: Run, role: str, source: Path | str | None = None, attentions: bool = False):
    """(model, tokenizer, directory or None) for ``role``, or None when there is none.

    ``source`` is a directory, :data:`PRETRAINED`, or None for the default order: the
    --teacher_path / --student_path flag, this run's ``<role>/final``, then ``<role>.name_or_path``
    when ``<role>.init`` is pretrained."""
    if source is None:
        source = {"teacher": run.opts.teacher_path, "student": run.opts.student_path}.get(role)
    if source is None and (run.output_dir / role / "final").is_dir():
        source = run.output_dir / role / "final"
    if source is not None and source != PRETRAINED:
        log.info("%s: %s", role, source)
        given = str(source) == str({"teacher": run.opts.teacher_path, "student": run.opts.student_path}.get(role))
        try:
            model, tok = load_saved(source, f"--{role}_path" if given else f"the {role}", attentions,
                                    causal_ok=role == "teacher")
        except UserError:
            if given or Path(source).resolve().parent.parent != run.output_dir.resolve():
                raise
            raise UserError(f"the {role} this run exported ({source}) does not load: its files are damaged or "
                            f"missing; delete that directory and rerun with --resume_from_checkpoint auto (the stage "
                            f"exports it again from its last checkpoint)") from None
        return model, tok, Path(source)
    mcfg = getattr(run.cfg, role, None)  # the baseline student exists only as trained by this run
    if mcfg is None or mcfg.init != "pretrained":
        return None
    tok = load_tokenizer(mcfg.tokenizer, mcfg.name_or_path)
    return build_model(mcfg, tok, attentions, causal_ok=role == "teacher"), tok, None


def benchmark(cfg: Config, opts: RunOptions = RunOptions(), run: Run | None = None,
              sources: dict | None = None) -> dict:
    """Score and time the available models; writes the three report files into output_dir."""
    from benchmark import BenchModel, run_benchmark
    from benchmark.core import benchmark_examples
    if run is None and opts.resume:
        raise UserError("--mode benchmark has nothing to resume (it keeps no checkpoints); drop "
                        "--resume_from_checkpoint, and pass --overwrite to replace earlier reports")
    run = run or start(cfg, opts)
    check_reports_free(run)
    if sources is None:  # benchmark mode: exactly the models given on the command line, when any is
        given = {"teacher": run.opts.teacher_path, "student": run.opts.student_path}
        sources = {role: path for role, path in given.items() if path} or None
    models = []
    for role in sources or ("teacher", "student", BASELINE):
        found = resolve_model(run, role, (sources or {}).get(role))
        if found is not None and not found[0].config.is_encoder_decoder:
            log.warning("benchmark: the %s is a causal LM; the benchmark scores seq2seq models, so it is left out",
                        role)
        elif found is not None:
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
    earlier = {p: p.stat().st_mtime_ns for p in run.output_dir.glob("predictions_*.jsonl")}
    record_run(run, "benchmark")
    results = run_benchmark(models, run)
    for old, mtime in earlier.items():  # predictions of models no longer compared go, once the new ones exist
        if dist.is_main() and old.exists() and old.stat().st_mtime_ns == mtime:
            old.unlink()
    return results


def check_reports_free(run: Run) -> None:
    """Earlier benchmark reports are replaced only on request (--overwrite, or resuming a pipeline)."""
    if (run.output_dir / "benchmark_results.json").exists() and not (run.opts.overwrite or run.opts.resume == "auto"):
        raise UserError(f"{run.output_dir} already holds benchmark reports; pass --overwrite to replace them "
                        f"or choose another --output_dir")


def preflight(run: Run) -> None:
    """Checks that would otherwise fail only after hours of training."""
    build_objective(run.cfg)
    on_policy_objective(run.cfg)
    check_on_policy_data(run)
    check_reports_free(run)
    t, s = run.cfg.teacher, run.cfg.student
    if s.init == "shrink" and t.init == "scratch" and not run.opts.teacher_path:   # the teacher is trained first
        layers = (s.arch.encoder_layers, s.arch.decoder_layers)
        # the vocabulary and special ids do not shape a shrink: any will do
        shrunk_config(scratch_config(t.arch, vocab_size=64, pad=0, eos=1, bos=1), *layers, **narrow_width(s))
    if run.cfg.distill.pseudo_labels is not None:
        _ = run.unlabeled  # a transfer set is read (and so checked) before the teacher trains
    split = run.cfg.benchmark.split
    if not getattr(run.splits, split):
        raise UserError(f"benchmark.split {split!r} is empty; adjust data.split_ratios or give data.{split}_file")


def full_pipeline(cfg: Config, opts: RunOptions = RunOptions()) -> dict:
    """train_teacher -> distill_student -> benchmark in one run directory.

    With --resume_from_checkpoint auto, a stage whose final model already exists is skipped. With
    --overwrite, the new teacher and student replace the earlier ones once both are trained."""
    if opts.resume not in (None, "auto"):
        raise UserError("full_pipeline resumes with --resume_from_checkpoint auto (it finds each stage's checkpoint)")
    run = start(cfg, opts)
    # an interrupted --overwrite (a stage's new result, or its start, beside the old): the later stages'
    # old results came from the old models, so they are replaced too, even where nothing new was written
    run.renewing = opts.resume == "auto" and any(replacing(run, role) for role in ("teacher", "student", BASELINE))
    if opts.resume == "auto" and not run.renewing and all((run.output_dir / name).is_file() for name in REPORTS):
        return finished_run(run)
    preflight(run)
    run.defer_replace = True
    if opts.teacher_path:
        teacher = Path(opts.teacher_path)
    elif not cfg.training.train_teacher:
        teacher = PRETRAINED  # an already fine-tuned teacher, used as it is
    else:
        teacher = finished_model(run, "teacher") or train_teacher(cfg, opts, run)
    models = {"teacher": teacher,
              "student": finished_model(run, "student") or distill_student(cfg, opts, run, teacher, baseline=False)}
    if cfg.training.baseline:
        from baseline import train_baseline
        models[BASELINE] = finished_model(run, BASELINE) or train_baseline(cfg, opts, run, teacher)
    for role in models:
        if (stage_dirs(run, role, new=True)[0] / "final").is_dir():
            models[role] = replace_stage(run, role)
    return benchmark(cfg, opts, run, models)


def finished_run(run: Run) -> dict:
    """A pipeline whose benchmark reports exist (written last) is finished: resuming it changes nothing,
    when it ran under this config."""
    out = run.output_dir
    try:
        saved = json.loads((out / "config.resolved.json").read_text(encoding="utf-8"))
        results = json.loads((out / "benchmark_results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{out}: the finished run's config.resolved.json or benchmark_results.json is unreadable "
                        f"({one_line(e, 80)}); redo the benchmark with --mode benchmark --overwrite") from None
    ignored = {key.split("[")[0] for key in PATHS} | {"training.rendezvous_timeout", "training.num_threads"}
    diffs = [d for d in config_differences(saved, resolved_dict(run.cfg)) if d.split(":")[0] not in ignored]
    if diffs:
        raise UserError(f"{out} holds a finished run of another config ({'; '.join(diffs[:3])}); use the config it "
                        f"ran with, or --overwrite to run it again")
    log.info("the run in %s is finished (benchmark reports in place); nothing to resume", out)
    return results


def finished_model(run: Run, role: str) -> Path | None:
    """With --resume_from_checkpoint auto: the stage's exported model, when it has one to continue
    from (a replacing stage's new one first; None while a replacing stage is unfinished)."""
    if run.opts.resume != "auto":
        return None
    for new in (True, False):
        run_dir, ckpt_dir = stage_dirs(run, role, new=new)
        if (run_dir / "final").is_dir():
            check_unchanged(run, role, ckpt_dir)
            return run_dir / "final"
        if new and (replacing(run, role) or run.renewing):
            return None
    return None


MODES = {
    "train_teacher": train_teacher,
    "distill_student": distill_student,
    "benchmark": benchmark,
    "full_pipeline": full_pipeline,
}
