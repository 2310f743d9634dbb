"""The interface every distillation loss implements.

A loss is an ``nn.Module`` called as ``loss(student_out, teacher_out, labels, attention_mask)``
where the outputs are transformers ``Seq2SeqLMOutput`` objects of the same batch, ``labels``
is ``[B, T]`` with -100 at padding and ``attention_mask`` is the source mask ``[B, S]`` (needed
by encoder-side losses). It returns the **sum** over target tokens
(a 0-dim float32 tensor); the training loop divides once by the number of target tokens
in the whole accumulation window, so unequal micro-batches weigh every token equally.

``requires`` tells the loop what to ask the models for: ``"logits"`` (always returned),
``"hidden_states"`` (``output_hidden_states=True``) or ``"attentions"``
(``output_attentions=True`` and eager attention).

Losses that depend on the two architectures (layer maps, projections between widths) size
themselves in ``bind(student_config, teacher_config)``, called once the models exist and before
the optimizer is built, so their parameters train with the student and live in checkpoints.

Logit losses subclass :class:`LogitLoss` and implement only ``token_losses`` on the
flattened ``[N, V]`` logits of the N unmasked target positions. Masking, vocabulary
slicing and summation live in one place, so chunking over N, a cached sparse teacher or
a cross-tokenizer alignment can replace the gathering step without touching the losses.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

IGNORE_INDEX = -100


class DistillationLoss(nn.Module, ABC):
    """Base class. Subclasses set ``requires`` and implement ``forward``."""

    requires: frozenset[str] = frozenset({"logits"})

    @abstractmethod
    def forward(self, student_out, teacher_out, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of the loss over the tokens of the batch."""

    def bind(self, student_config, teacher_config) -> None:
        """Adapt to the two models (transformers configs); a no-op for most losses."""

    def describe(self) -> str:
        """A short human-readable form for the run log's formula."""
        return type(self).__name__


class LogitLoss(DistillationLoss):
    """A divergence between teacher and student token distributions at each target position.

    ``vocab_size`` (set by the trainer to the tokenizer's length) cuts off padded embedding
    rows: T5's tokenizer has 32,100 tokens but its models 32,128 logits, and the 28 unused
    ids must not receive probability mass in either distribution.
    """

    requires = frozenset({"logits"})

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.vocab_size: int | None = None

    def forward(self, student_out, teacher_out, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        s, t = gather_target_logits(student_out.logits, teacher_out.logits, labels, self.vocab_size)
        return self.token_losses(s, t).sum()

    @abstractmethod
    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``[N, V]`` float32 logits of both models -> ``[N]`` per-token loss."""

    def describe(self) -> str:
        return f"{type(self).__name__}(T={self.temperature:g})"


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (softmax and sums in full precision); float32/64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def gather_target_logits(student_logits, teacher_logits, labels, vocab_size=None):
    """Select unmasked positions and the common vocabulary; upcast to float32.

    student_logits ``[B, T, Vs]``, teacher_logits ``[B, T, Vt]``, labels ``[B, T]``
    -> two ``[N, V]`` float32 tensors, N = number of labels != -100, V = min(Vs, Vt, vocab_size).
    Upcasting here keeps softmax in fp32 under bf16/fp16 autocast."""
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} cover different target positions")
    v = min(student_logits.shape[-1], teacher_logits.shape[-1], vocab_size or 1 << 62)
    mask = labels != IGNORE_INDEX
    return upcast(student_logits[mask][:, :v]), upcast(teacher_logits[mask][:, :v])
