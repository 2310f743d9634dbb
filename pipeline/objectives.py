"""The student's objectives from the config: the configured one and the on-policy micro-batches'."""
from __future__ import annotations


from settings import Config
from distiller_zoo import LossConfigError, Objective, build_loss
from generation import sampling_config
from training.on_policy import OnPolicy
from utils.errors import UserError
from pipeline.run import Run


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
