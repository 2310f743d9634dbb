"""The student's objective: ``ce_weight * CE + sum_i weight_i * loss_i``, as sums over tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import (IGNORE_INDEX, DistillationLoss, LogitLoss, LossOutputError, loss_path, probe,
                                upcast, user_call)
from distiller_zoo.fused import fused_logit_objective


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """Summed token cross-entropy in float32; ``[B, T, V]``, ``[B, T]`` -> scalar.

    Padded vocabulary rows (beyond ``vocab_size``) are excluded from the softmax so the CE
    and the KD terms see the same distribution."""
    v = min(logits.shape[-1], vocab_size or logits.shape[-1])
    return F.cross_entropy(upcast(logits[..., :v]).reshape(-1, v), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


class Objective(nn.Module):
    """Weighted sum of cross-entropy and distillation terms.

    ``forward(student_out, teacher_out, labels)`` returns ``(total, terms)``: the weighted
    sum and each unweighted term, all sums over target tokens. Trainable parts of losses
    (e.g. feature projections) are submodules here, so the optimizer and checkpoints see them.
    """

    def __init__(self, ce_weight: float, terms: list[tuple[str, float, DistillationLoss]],
                 vocab_size: int | None = None):
        super().__init__()
        self.ce_weight = ce_weight
        self.names = [name for name, _, _ in terms]
        self.weights = [w for _, w, _ in terms]
        self.losses = nn.ModuleList([loss for _, _, loss in terms])
        self.vocab_size = vocab_size
        self.prefix = ""  # before each term's name in the step records (the on-policy objective's: "op_")

    @property
    def vocab_size(self) -> int | None:
        """The tokenizer's length: logits beyond it (padded embedding rows) are ignored everywhere."""
        return self._vocab_size

    @vocab_size.setter
    def vocab_size(self, n: int | None) -> None:
        self._vocab_size = n
        for loss in self.losses:
            if isinstance(loss, LogitLoss):
                loss.vocab_size = n

    @property
    def requires(self) -> frozenset[str]:
        return frozenset().union(*(loss.requires for loss in self.losses)) if self.losses else frozenset()

    def temperatures(self) -> list[float]:
        """The temperatures of the logit losses (a cached teacher stores its tail at each)."""
        return sorted({loss.temperature for loss in self.losses if isinstance(loss, LogitLoss)})

    def formula(self) -> str:
        parts = [f"{self.ce_weight:g} * CE"] if self.ce_weight else []
        parts += [f"{w:g} * {loss.describe()}" for w, loss in zip(self.weights, self.losses) if w]
        return "loss = " + " + ".join(parts)

    def bind(self, student_config, teacher_config) -> None:
        """Let every loss adapt to the two architectures (layer maps, projections), then try each on
        a tiny input: a bad loss fails here, before anything is trained (a ValueError names it)."""
        for loss in self.losses:
            user_call(f"loss {loss_path(loss)!r}: bind", loss.bind, student_config, teacher_config,
                      refusals=(ValueError,))
            probe(loss)

    def fused(self, student_out, hidden, head, teacher, labels, attention_mask=None, chunk_size: int = 0,
              compile: bool = False):
        """The trainer's path: ``(total, terms)`` as :meth:`forward`, with CE and the logit losses
        computed chunk by chunk from the student's final decoder states ``hidden [B, T, d]``
        through ``head`` (an ``LMHead``) against ``teacher`` (a ``TeacherTargets`` from the seam).
        Feature and attention losses read ``student_out`` and ``teacher.outputs`` as usual."""
        mask = labels != IGNORE_INDEX
        active = [(name, w, loss) for name, w, loss in zip(self.names, self.weights, self.losses) if w != 0]
        logit = [(w, loss) for _, w, loss in active if isinstance(loss, LogitLoss)]
        total, sums = fused_logit_objective(hidden[mask], head, labels[mask], teacher, self.ce_weight,
                                            [loss for _, loss in logit], [w for w, _ in logit], chunk_size, compile)
        terms, it = {"ce": sums[0]}, iter(sums[1:])
        for name, w, loss in active:
            key = name if name not in terms else f"{name}_{len(terms)}"
            if isinstance(loss, LogitLoss):
                terms[key] = next(it)
            else:
                if teacher.outputs is None:
                    raise ValueError(f"{name} needs the teacher's hidden states or attentions, which this "
                                     f"teacher source does not provide")
                terms[key] = _scalar(name, user_call(f"loss {name!r}", loss, student_out, teacher.outputs, labels,
                                                     attention_mask, refusals=(RuntimeError,)))
                total = total + w * terms[key]
        if teacher is not None and teacher.aligned is not None:   # logged per token: the aligned fraction
            terms["aligned_fraction"] = torch.tensor(float(teacher.aligned), device=total.device)
        return total, {self.prefix + k: v for k, v in terms.items()}

    def forward(self, student_out, teacher_out, labels, attention_mask=None):
        terms = {"ce": cross_entropy_sum(student_out.logits, labels, self.vocab_size)}
        total = self.ce_weight * terms["ce"]
        for name, w, loss in zip(self.names, self.weights, self.losses):
            if w == 0:
                continue
            key = name if name not in terms else f"{name}_{len(terms)}"
            terms[key] = loss(student_out, teacher_out, labels, attention_mask)
            total = total + w * terms[key]
        return total, terms


def _scalar(name: str, value):
    """A feature or attention loss returns one real number (a sum over its positions)."""
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.is_floating_point():
        got = type(value).__name__ if not isinstance(value, torch.Tensor) else f"shape {list(value.shape)}, {value.dtype}"
        raise LossOutputError(f"loss {name!r}: forward must return one real number (a 0-dim float tensor); got {got}")
    return value
