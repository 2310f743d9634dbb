"""Checkpoints of a training run: save (rank 0 writes, every rank's RNG state inside), load and
resume (every rank reads the same file; a run saved with N ranks resumes with M), and the export
of the final model."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from checkpoints import (RESUME_MAY_CHANGE, check_format, config_differences, load_checkpoint_file,
                         resume_changes, rng_state, save_checkpoint_file, set_rng_state)
from generation import generation_config
from utils import distributed as dist
from utils.errors import one_line, UserError
from utils.files import atomic_write_text
from utils.logs import log
from utils.runtime import set_seed


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""

    step: int = 0           # optimizer steps done
    epoch: int = 0          # current epoch
    window: int = 0         # next accumulation window within the epoch
    best_metric: float | None = None
    best_step: int | None = None
    history: list = field(default_factory=list)  # validation results
    resumes: list = field(default_factory=list)  # {"step", "checkpoint", "changed"} per resume


class CheckpointMixin:
    """The Trainer's checkpoints and export (see training.trainer.Trainer)."""

    def _save_weights(self, path: Path) -> None:
        if not dist.is_main():
            return
        state = {name: m.state_dict() for name, m in self.trainable_modules().items()}
        save_checkpoint_file({"weights": state, "step": self.state.step, "config": self.job.config}, path)

    def save_checkpoint(self) -> Path:
        """Everything needed to continue exactly; written atomically; keeps the newest N."""
        job, s = self.job, self.state
        if not self._weights_finite():
            self._stop_not_finite(f"at step {s.step} the weights are no longer finite")
        payload = {
            "weights": {name: m.state_dict() for name, m in self.trainable_modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "rng_ranks": dist.all_gather(rng_state()),  # each rank's dropout stream, restored per rank
            "world_size": self.world,
            "state": asdict(s),
            "role": job.role,
            "total_steps": self.total_steps,
            "config": job.config,
        }
        payload["on_policy_ranks"] = dist.all_gather(self.batches.state_dict())  # replay buffers, adaptive share
        path = job.checkpoint_dir / f"step_{s.step:08d}.pt"
        if dist.is_main():
            save_checkpoint_file(payload, path)
            for old in sorted(job.checkpoint_dir.glob("step_*.pt"))[:-job.optim.save_total_limit]:
                old.unlink()
            log.info("%s checkpoint saved: %s", job.role, path)
        dist.barrier()  # no rank leaves (e.g. stopped by a signal) before the checkpoint is complete
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything from ``path``; refuses a checkpoint of another role, model, data schedule
        or format, and any change a resume cannot apply (RESUME_MAY_CHANGE lists those it applies)."""
        role = self.job.role
        ckpt, saved, changed = read_resumable(path, role, self.job.config, self.world, self.job.checkpoint_dir)
        for name, module in self.trainable_modules().items():
            try:
                module.load_state_dict(ckpt["weights"][name])
            except (KeyError, RuntimeError, TypeError, IndexError, AttributeError) as e:
                section = self.job.section
                diffs = config_differences(saved.get(section, {}), self.job.config.get(section, {}), f"{section}.") + \
                    config_differences(saved.get("distill", {}), self.job.config.get("distill", {}), "distill.")
                what = "; ".join(diffs[:4]) or one_line(e)
                raise UserError(f"checkpoint {path} does not fit the configured {role} ({what}); resume with the "
                                f"config it was saved with, or start a new run") from None
        check_total_steps(ckpt, path, self.total_steps)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler.is_enabled() and ckpt["scaler"]:
                self.scaler.load_state_dict(ckpt["scaler"])  # a fp32/bf16 checkpoint has no scale to restore
            self.state = TrainState(**ckpt["state"])
            self._restore_rng(ckpt)
            self.batches.load_state_dict(_rank_share(ckpt.get("on_policy_ranks"), dist.rank()))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise UserError(f"checkpoint {path} does not match this version's format ({one_line(e, 120)}); resume "
                            f"it with the version that wrote it, or start the stage over with --overwrite") from None
        if changed:
            self._apply_resume_changes()
        self.state.resumes.append({"step": self.state.step, "checkpoint": str(path), "changed": changed})

    def _restore_rng(self, ckpt: dict) -> None:
        """Each rank continues its own RNG streams; a rank the saving run did not have gets fresh ones."""
        saved, r = ckpt.get("rng_ranks") or [ckpt["rng"]], dist.rank()
        if r < len(saved):
            set_rng_state(saved[r])
        else:
            set_seed(self.job.seed * 1_000_003 + r + 7919 * self.state.step)

    def _apply_resume_changes(self) -> None:
        """Write the configured peak learning rate and weight decay into the restored optimizer and
        schedule: the schedule continues from its step with the new peak."""
        o, sched = self.job.optim, self.scheduler
        groups = self.optimizer.param_groups
        groups[0]["weight_decay"] = o.weight_decay  # group 0: matrices (see _param_groups)
        sched.base_lrs = [o.learning_rate] * len(groups)
        for group, factor in zip(groups, sched.lr_lambdas):
            group["initial_lr"] = o.learning_rate
            group["lr"] = o.learning_rate * factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in groups]

    def finish(self) -> Path:
        """Load the best weights (if validated) and export model + tokenizer to <run_dir>/final."""
        from models import export
        final = self.job.run_dir / "final"
        if not dist.is_main():  # rank 0 exports; the others wait so that the next stage finds the model
            dist.barrier()
            return final
        best = self.job.checkpoint_dir / "best.pt"
        if self.state.best_step is not None and best.is_file():
            self.model.load_state_dict(load_checkpoint_file(best)["weights"]["model"])
            log.info("%s: exporting the best model (step %d, %s %.4f)", self.job.role, self.state.best_step,
                     self.metric_for_best, self.state.best_metric)
        elif self.state.best_step is not None:
            log.warning("%s: %s (the best model, of step %d) is gone; exporting the last step's weights instead",
                        self.job.role, best, self.state.best_step)
        final = export(self.model, self.tokenizer, self.job.run_dir / "final",
                       generation_config(self.job.generation, self.model, self.tokenizer))
        summary = {"role": self.job.role, "steps": self.state.step, "best_step": self.state.best_step,
                   "metric_for_best": self.metric_for_best, "best_metric": self.state.best_metric,
                   "validation": self.state.history, "resumes": self.state.resumes}
        atomic_write_text(self.job.run_dir / "training_summary.json", json.dumps(summary, indent=2) + "\n")
        dist.barrier()
        return final


def check_total_steps(ckpt: dict, path: Path, total_steps: int) -> None:
    if ckpt["total_steps"] != total_steps:
        raise UserError(f"checkpoint {path} belongs to a run of {ckpt['total_steps']} steps but the config and data "
                        f"now give {total_steps}; resume with the same data and epochs/max_steps/batch settings")


def total_steps(optim, pairs: int, world: int) -> tuple[int, int, int]:
    """(micro-batches per epoch, optimizer steps per epoch, optimizer steps of the run) for ``pairs``
    training pairs in global micro-batches of ``batch_size`` x ``world``."""
    micro = math.ceil(pairs / (optim.batch_size * world))
    windows = math.ceil(micro / optim.gradient_accumulation_steps)
    return micro, windows, optim.max_steps or optim.epochs * windows


def config_section(role: str) -> str:
    """The config section holding a stage's settings: the CE-only baseline (pipeline.BASELINE) trains
    with the student's, so its messages must name training.student.*."""
    return "student" if role == "student_ce" else role


def read_resumable(path: Path, role: str, config: dict, world: int, checkpoint_dir: Path,
                   ) -> tuple[dict, dict, list[str]]:
    """The checkpoint at ``path``, its config (with this run's batch size per rank) and the changes a
    resume applies, once every check that needs no model passed: role, format, global batch, config
    and the best model's file. Run before anything is computed or written, and again on load."""
    ckpt = load_checkpoint_file(path)
    if "role" not in ckpt:
        raise UserError(f"{path} holds a model's weights only (like best.pt), not a checkpoint to resume; pass a "
                        f"step_*.pt file or 'auto'")
    if ckpt.get("role") != role:
        raise UserError(f"checkpoint {path} is a {ckpt.get('role')} checkpoint, not a {role} one; "
                        f"pass the {role}'s checkpoint or 'auto'")
    check_format(ckpt, path)
    try:
        TrainState(**ckpt["state"])
    except TypeError as e:
        raise UserError(f"checkpoint {path} does not match this version's format ({one_line(e, 120)}); resume "
                        f"it with the version that wrote it, or start the stage over with --overwrite") from None
    section = config_section(role)
    saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    saved = _same_global_batch(saved, section, ckpt.get("world_size", 1), config, world, path)
    refused, changed = resume_changes(saved, config, section)
    if refused:
        raise UserError(f"checkpoint {path}: a resume cannot change {'; '.join(refused[:4])}; resume with the "
                        f"checkpoint's values (a resume may change training.{section}."
                        f"{{{', '.join(RESUME_MAY_CHANGE)}}}) or start the stage over with --overwrite")
    _check_best(ckpt, Path(checkpoint_dir) / "best.pt")
    return ckpt, saved, changed


def _check_best(ckpt: dict, best: Path) -> None:
    """The best model a resumed run will export (from the stage's checkpoint directory) must be readable."""
    state = ckpt["state"] if isinstance(ckpt["state"], dict) else {}
    if state.get("best_step") is not None and best.exists():
        try:
            load_checkpoint_file(best)
        except UserError:
            raise UserError(f"{best}, the best model so far (step {state['best_step']}), is damaged or unreadable; "
                            f"delete it to export the last step's weights at the end instead, or start the stage "
                            f"over with --overwrite") from None


def _same_global_batch(saved: dict, section: str, saved_world: int, config: dict, world: int, path: Path) -> dict:
    """A run saved with N ranks resumes with M ranks when batch_size x ranks (the global micro-batch,
    which fixes the data order) is unchanged; returns ``saved`` with this run's per-rank batch size."""
    optim = saved.get("training", {}).get(section)
    if saved_world == world or not isinstance(optim, dict) or "batch_size" not in optim:
        return saved  # same ranks: resume_changes refuses a batch_size change by name
    batch = config["training"][section]["batch_size"]
    was = optim["batch_size"] * saved_world
    if was != batch * world:
        fits = f"--set training.{section}.batch_size={was // world}" if was % world == 0 else \
            f"a number of ranks that divides {was}"
        raise UserError(f"checkpoint {path} was saved with {saved_world} rank(s) x batch_size "
                        f"{optim['batch_size']} = {was} pairs per micro-step, this run has {world} x "
                        f"{batch} = {batch * world}; resume with {fits} to keep the data order")
    return {**saved, "training": {**saved["training"], section: {**optim, "batch_size": batch}}}


def _rank_share(states: list | None, rank: int) -> dict | None:
    """This rank's on-policy state; a rank the saving run did not have starts with an empty buffer."""
    if not states or states[0] is None:  # saved without on-policy batches
        return None
    return states[rank] if rank < len(states) else {**states[0], "buffer": []}
