"""The seam: *the teacher's distribution at each student target position*.

The trainer asks one question per micro-batch, ``source.targets(batch, need)``, and gets a
:class:`TeacherTargets` over the N unmasked target positions (row-major over ``labels != -100``).
Losses read it chunk by chunk, ``targets.chunk(a, b)``, as either

- a dense ``[n, V]`` tensor of teacher logits (:class:`LiveTeacher`: computed per chunk from the
  teacher's final decoder states through its own LM head, so its ``[B, T, V]`` logits never
  exist), or
- a :class:`SparseChunk`: the teacher's top-K ids and log-probabilities plus the log-mass of
  the rest of the vocabulary (:class:`distiller_zoo.cache.CachedTeacher`).

A teacher with another tokenizer, causal or seq2seq, is a third implementation of the same two
methods (:mod:`distiller_zoo.cross_teacher`). ``targets.outputs`` carries the teacher's hidden states / attentions for the feature
and attention losses (None when the source has none, e.g. the cache).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from distiller_zoo.base import IGNORE_INDEX
from distiller_zoo.heads import LMHead, Scratch, decoder_states, lm_head


@dataclass
class SparseChunk:
    """A top-K teacher at n positions: ``ids [n, K]``, ``logp [n, K]`` (log-probabilities at T = 1)
    and ``tail`` ``{T: [n]}``: the log of the probability mass outside the K ids at each
    temperature the objective uses (the tail of ``softmax(z / T)`` is not a function of the
    tail at T = 1, so the cache stores one column per temperature)."""

    ids: torch.Tensor
    logp: torch.Tensor
    tail: dict[float, torch.Tensor]

    def at_temperature(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p^T over the K ids [n, K], log p^T of the rest [n])``.

        ``softmax(z / T)`` at the K ids is ``exp(logp / T - c)``; ``c`` follows from the stored
        tail: ``sum_k exp(logp_k / T - c) = 1 - exp(tail_T)``."""
        if t not in self.tail:
            raise KeyError(f"the teacher cache holds no tail mass for temperature {t:g}; rebuild it")
        tail = self.tail[t]
        scaled = self.logp.float() / t
        head_mass = torch.log1p(-torch.exp(tail).clamp(max=1.0))   # log(1 - tail mass)
        c = torch.logsumexp(scaled, dim=-1) - head_mass
        return scaled - c.unsqueeze(-1), tail

    def buckets(self, t: float) -> torch.Tensor:
        """``[n, K + 1]``: log p^T at the K ids, then of the rest (the losses' sparse form)."""
        log_p_k, log_p_rest = self.at_temperature(t)
        return torch.cat([log_p_k, log_p_rest.unsqueeze(-1)], dim=-1)

    def select(self, rows: torch.Tensor) -> "SparseChunk":
        """The positions ``rows`` only."""
        return SparseChunk(self.ids[rows], self.logp[rows], {t: v[rows] for t, v in self.tail.items()})


class TeacherTargets(ABC):
    """The teacher's distribution at the N positions of one micro-batch."""

    n: int
    outputs = None
    aligned: int | None = None   # positions with a teacher signal, when not all have one (another tokenizer)

    @abstractmethod
    def chunk(self, start: int, end: int):
        """Positions ``start:end``: a dense ``[n, V]`` logits tensor or a :class:`SparseChunk`."""


class DenseTargets(TeacherTargets):
    """Teacher logits computed lazily per chunk: ``head(hidden[start:end])``."""

    def __init__(self, hidden: torch.Tensor, head: LMHead, outputs=None):
        self.hidden, self.head, self.outputs, self.n = hidden, head, outputs, hidden.shape[0]
        self.scratch = Scratch()

    @torch.no_grad()
    def chunk(self, start: int, end: int) -> torch.Tensor:
        """Valid until the next call: chunks share one buffer, and a loss may write over its chunk."""
        return self.head.into(self.hidden[start:end], self.scratch)


class LiveTeacher:
    """A frozen seq2seq teacher with the student's tokenizer, run once per micro-batch."""

    def __init__(self, model, vocab_size: int | None = None):
        self.model = model.eval().requires_grad_(False)
        self.vocab_size = vocab_size

    def to(self, device) -> "LiveTeacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def targets(self, batch: dict, need: frozenset = frozenset()) -> DenseTargets:
        outputs, hidden = decoder_states(self.model, batch, need)
        mask = batch["labels"] != IGNORE_INDEX
        return DenseTargets(hidden[mask], lm_head(self.model, self.vocab_size), outputs)


def teacher_source(teacher, vocab_size: int | None = None):
    """A teacher source from what a ``TrainJob`` holds: a source as is, a bare model wrapped live."""
    if teacher is None or hasattr(teacher, "targets"):
        return teacher
    return LiveTeacher(teacher, vocab_size)
