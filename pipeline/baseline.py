"""The CE-only baseline student (``training.baseline``, ``--with_baseline``): the control that says
whether distillation paid off. A stage of its own, ``student_ce``, with the student's directories,
checkpoints, resume and --overwrite semantics (pipeline.stages)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from settings import Config
from training import Trainer
from utils.errors import UserError
from utils.files import fields, read_json
from utils.runtime import set_seed

from pipeline.run import BASELINE, Run, RunOptions, check_positions, make_job, start
from pipeline.sources import build_student, resolve_model
from pipeline.stages import finished_stage, prepare_stage, run_stage, stage_dirs


def train_baseline(cfg: Config, opts: RunOptions = RunOptions(), run: Run | None = None,
                   teacher_path: Path | str | None = None) -> Path:
    """The control that says whether distillation paid off: the student built exactly as
    distill_student builds it (same seed, hence the same initial weights; the teacher is loaded only
    for its tokenizer, or its layers under init shrink), trained with cross-entropy alone on the
    labeled pairs (no pseudo-labels, no transfer set) for as many optimizer steps as the distilled
    student took, with its optimisation settings. Returns <output_dir>/student_ce/final."""
    run = baseline_run(run or start(cfg, opts))
    stage = prepare_stage(run, BASELINE)
    if stage.finished:
        return finished_stage(stage)
    steps = distilled_steps(run)
    found = resolve_model(run, "teacher", teacher_path)
    if found is None:
        raise UserError("training.baseline: the CE-only student is built like the distilled one, from the "
                        "teacher's tokenizer; pass --teacher_path DIR or train the teacher into this --output_dir")
    set_seed(cfg.training.seed)
    student, tok = build_student(run, found[0], found[1], attentions=False)
    del found
    check_positions(student, cfg, "student")
    job = make_job(run, BASELINE, tok, stage)
    # the student's settings with this budget; a resume is checked against training.student
    # (TrainJob.section) and against the budget (the checkpoint's total steps)
    job.optim = dataclasses.replace(job.optim, max_steps=steps)
    return run_stage(run, stage, Trainer(job, student, tok))


def baseline_run(run: Run) -> Run:
    """The run as the baseline stage sees it: a checkpoint file given to resume another stage
    (the student's) does not apply to it; it continues its own ('auto') instead."""
    resume = run.opts.resume
    if resume in (None, "auto") or Path(resume).resolve().parent.name.startswith(BASELINE):
        return run
    return dataclasses.replace(run, opts=dataclasses.replace(run.opts, resume="auto"))


def distilled_steps(run: Run) -> int:
    """Optimizer steps the distilled student took (from its training summary): the baseline's budget."""
    for d in (stage_dirs(run, "student", new=True)[0], run.output_dir / "student"):
        if (d / "final").is_dir() and (d / "training_summary.json").is_file():
            return _summary_steps(d / "training_summary.json")
    raise UserError(f"training.baseline: the CE-only student trains for as many steps as the distilled one; "
                    f"distill the student into {run.output_dir} first (--mode distill_student)")


def _summary_steps(path: Path) -> int:
    """The steps a finished stage's training_summary.json records (validated: the file may be damaged)."""
    fix = "restore the file, or distill the student again with --overwrite"
    return read_json(path, fix, lambda s: fields(s, steps=lambda v: type(v) is int and v >= 0))["steps"]
