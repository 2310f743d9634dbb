"""distiller_zoo: pluggable distillation losses, chosen by name in the config.

Every loss is listed in :data:`LOSSES` (config name -> class); nothing registers itself
on import. Use one in your own loop::

    from distiller_zoo import VanillaKL
    kd = VanillaKL(temperature=2.0)
    kd.vocab_size = len(tokenizer)           # ignore padded embedding rows
    s_out = student(input_ids=..., attention_mask=..., decoder_input_ids=...)
    with torch.no_grad():
        t_out = teacher(input_ids=..., attention_mask=..., decoder_input_ids=...)
    loss = kd(s_out, t_out, labels) / (labels != -100).sum()   # losses return sums

:class:`Objective` combines cross-entropy and weighted losses; ``Objective.fused`` is the
trainer's path (chunked from decoder states, :mod:`distiller_zoo.fused`), with the teacher
answering through the seam in :mod:`distiller_zoo.teacher` (live) or :mod:`distiller_zoo.cache`.
"""
from __future__ import annotations

import inspect

from distiller_zoo.base import IGNORE_INDEX, DistillationLoss, LogitLoss, gather_target_logits
from distiller_zoo.logit import GeneralizedJSD, ReverseKL, SkewKL, SkewReverseKL, TotalVariation, VanillaKL
from distiller_zoo.objective import Objective, cross_entropy_sum
from distiller_zoo.feature import HiddenCosine, HiddenMSE
from distiller_zoo.attention import AttentionKL, AttentionMSE

LOSSES: dict[str, type[DistillationLoss]] = {
    "vanilla_kl": VanillaKL,
    "reverse_kl": ReverseKL,
    "jsd": GeneralizedJSD,
    "tvd": TotalVariation,
    "skew_kl": SkewKL,
    "skew_reverse_kl": SkewReverseKL,
    "hidden_mse": HiddenMSE,
    "hidden_cosine": HiddenCosine,
    "attention_kl": AttentionKL,
    "attention_mse": AttentionMSE,
}


class LossConfigError(ValueError):
    """A loss name or option in the config is wrong."""


def build_loss(name: str, params: dict | None = None) -> DistillationLoss:
    """Instantiate the loss registered as ``name`` with keyword options ``params``."""
    if name not in LOSSES:
        raise LossConfigError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params or {}) - set(accepted))
    if unknown:
        raise LossConfigError(f"loss {name!r} has no option {', '.join(map(repr, unknown))}; "
                              f"its options: {', '.join(accepted) or 'none'}")
    try:
        return cls(**(params or {}))
    except (TypeError, ValueError) as e:
        raise LossConfigError(f"loss {name!r}: {e}") from None


__all__ = ["LOSSES", "build_loss", "LossConfigError", "Objective", "cross_entropy_sum", "DistillationLoss",
           "LogitLoss", "VanillaKL", "ReverseKL", "GeneralizedJSD", "TotalVariation", "SkewKL", "SkewReverseKL",
           "HiddenMSE", "HiddenCosine", "AttentionKL", "AttentionMSE", "gather_target_logits", "IGNORE_INDEX"]
