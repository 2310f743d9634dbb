"""distiller_zoo: pluggable distillation losses, chosen by name in the config.

Every loss is listed in :data:`LOSSES` (config name -> class); nothing registers itself
on import. A user's own loss is named by its import path, ``"my_pkg.my_module:MyLoss"``. Use one in your own loop::

    from distiller_zoo import VanillaKL
    kd = VanillaKL(temperature=2.0)
    kd.vocab_size = len(tokenizer)           # ignore padded embedding rows
    s_out = student(input_ids=..., attention_mask=..., decoder_input_ids=...)
    with torch.no_grad():
        t_out = teacher(input_ids=..., attention_mask=..., decoder_input_ids=...)
    loss = kd(s_out, t_out, labels) / (labels != IGNORE_INDEX).sum()   # losses return sums

:class:`Objective` combines cross-entropy and weighted losses; ``Objective.fused`` is the
trainer's path (chunked from decoder states, :mod:`distiller_zoo.fused`), with the teacher
answering through the seam in :mod:`distiller_zoo.teacher` (live) or :mod:`distiller_zoo.cache`.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback

from distiller_zoo.base import (IGNORE_INDEX, DistillationLoss, LogitLoss, LossConfigError, LossOutputError,
                                gather_target_logits, probe, user_call)
from distiller_zoo.logit import GeneralizedJSD, ReverseKL, SkewKL, SkewReverseKL, TotalVariation, VanillaKL
from distiller_zoo.objective import Objective, cross_entropy_sum
from distiller_zoo.feature import HiddenCosine, HiddenMSE
from distiller_zoo.attention import AttentionKL, AttentionMSE
from distiller_zoo.uld import ULD
from utils.errors import one_line

LOSSES: dict[str, type[DistillationLoss]] = {
    "vanilla_kl": VanillaKL,
    "reverse_kl": ReverseKL,
    "jsd": GeneralizedJSD,
    "tvd": TotalVariation,
    "skew_kl": SkewKL,
    "skew_reverse_kl": SkewReverseKL,
    "uld": ULD,
    "hidden_mse": HiddenMSE,
    "hidden_cosine": HiddenCosine,
    "attention_kl": AttentionKL,
    "attention_mse": AttentionMSE,
}


def loss_class(name: str) -> type[DistillationLoss]:
    """The class for a config name: a key of :data:`LOSSES`, or ``"package.module:Class"`` for a
    user's own loss (a subclass of :class:`DistillationLoss` or :class:`LogitLoss`)."""
    if ":" not in name:
        if name not in LOSSES:
            raise LossConfigError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}, or your own "
                                  f"class as 'my_pkg.my_module:MyLoss'")
        return LOSSES[name]
    module_name, _, attr = name.partition(":")
    if os.getcwd() not in sys.path:  # `python main.py` puts the project on sys.path, not the working directory
        sys.path.append(os.getcwd())
    module = import_user_module(name, module_name)
    cls = getattr(module, attr, None)
    if cls is None:
        raise LossConfigError(f"loss {name!r}: module {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, DistillationLoss)):
        raise LossConfigError(f"loss {name!r}: {attr} must be a class subclassing distiller_zoo.DistillationLoss "
                              f"(or LogitLoss); see the README's custom losses section")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise LossConfigError(f"loss {name!r}: {attr} does not implement {missing}")
    return cls


def import_user_module(name: str, module_name: str):
    """Import a user's loss module; an exit or any error in it is a one-line LossConfigError (Ctrl-C
    passes): importing user code must not end the run looking like a success."""
    try:
        return user_call(f"loss {name!r}: importing {module_name}", importlib.import_module, module_name,
                         refusals=(Exception,))
    except LossConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure while importing the user's module is a config problem
        missing = isinstance(e, ModuleNotFoundError) and f"{module_name}.".startswith(f"{e.name}.")
        where = "put it in the working directory or on PYTHONPATH" if missing else \
            f"the error is inside the module{_where(e)}"
        raise LossConfigError(f"loss {name!r}: cannot import module {module_name!r} ({type(e).__name__}: "
                              f"{one_line(e, 120)}); {where}") from None


def _where(e: BaseException) -> str:
    """`` (file.py, line N)``: where the user's code failed (the innermost frame, or the syntax error's)."""
    if isinstance(e, SyntaxError) and e.filename:
        return f" ({os.path.basename(e.filename)}, line {e.lineno})"
    frames = traceback.extract_tb(e.__traceback__)
    return f" ({os.path.basename(frames[-1].filename)}, line {frames[-1].lineno})" if frames else ""


def build_loss(name: str, params: dict | None = None) -> DistillationLoss:
    """Instantiate the loss ``name`` (see :func:`loss_class`) with keyword options ``params``."""
    cls = loss_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params or {}) - set(accepted))
    if unknown:
        raise LossConfigError(f"loss {name!r} has no option {', '.join(map(repr, unknown))}; "
                              f"its options: {', '.join(accepted) or 'none'}")
    try:
        loss = user_call(f"loss {name!r}: {cls.__name__}(...)", cls, **(params or {}))
    except (TypeError, ValueError) as e:
        if isinstance(e, LossConfigError):
            raise
        raise LossConfigError(f"loss {name!r}: {e}") from None
    if type(loss).bind is DistillationLoss.bind:  # else divergence may need bind first: Objective.bind probes it
        probe(loss)
    return loss


__all__ = ["LOSSES", "build_loss", "loss_class", "LossConfigError", "LossOutputError", "Objective",
           "cross_entropy_sum", "DistillationLoss", "LogitLoss", "VanillaKL", "ReverseKL", "GeneralizedJSD",
           "TotalVariation", "SkewKL", "SkewReverseKL", "ULD", "HiddenMSE", "HiddenCosine", "AttentionKL",
           "AttentionMSE", "gather_target_logits", "IGNORE_INDEX"]
