"""Training stages in a run directory: which checkpoint a stage resumes, replacing earlier results
only once the new ones are complete (``<role>.new``), and finished stages left alone."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from settings import save_config, to_dict
from data_loader import training_pairs
from checkpoints import latest_checkpoint
from training import Trainer
from training.checkpointing import check_total_steps, config_section, read_resumable, total_steps
from utils import distributed as dist
from utils.errors import UserError
from utils.logs import log

from pipeline.run import BASELINE, NEW, Run, record_run


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


def _has_results(run_dir: Path, ckpt_dir: Path) -> bool:
    return (run_dir / "final").exists() or (ckpt_dir.exists() and any(ckpt_dir.glob("*.pt")))


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
