"""Attention distillation: match the student's attention maps to the teacher's (TinyBERT, MiniLM)."""
from __future__ import annotations

from abc import abstractmethod

import torch

from distiller_zoo.base import upcast
from distiller_zoo.layers import LayerPairLoss

# transformers' output field of each kind of map
_MAPS = {"encoder": "encoder_attentions", "decoder": "decoder_attentions", "cross": "cross_attentions"}


class AttentionLoss(LayerPairLoss):
    """Base of the attention-map losses: head handling on top of :class:`LayerPairLoss`.

    Maps ``[B, H, Q, K]`` are compared row by row (one row = one query's distribution over
    keys) for the configured kinds: ``encoder`` self-attention (queries = source positions
    with ``attention_mask`` 1), ``decoder`` self-attention and ``cross`` attention (queries =
    target positions with ``labels != IGNORE_INDEX``). When the head counts differ, or with
    ``head_average: true``, both maps are first averaged over heads (a head-averaged map is
    still a distribution over keys); otherwise heads are compared one to one and averaged.
    Needs eager attention (transformers' sdpa returns no maps): the trainer selects it.
    Note that transformers returns maps after attention dropout; the teacher runs in eval mode.
    """

    requires = frozenset({"attentions"})
    KINDS = {"encoder": "encoder", "decoder": "decoder", "cross": "decoder"}

    def __init__(self, maps="all", layers="last", head_average: bool = False):
        super().__init__(maps, layers, "maps")
        self.maps = self.kinds
        self.head_average = bool(head_average)

    def bind_dims(self, s, t) -> None:
        if any(0 in p for pairs in self.pairs.values() for p in pairs):
            raise ValueError("layers: attention maps start at layer 1 (there is no embedding attention)")
        heads = {"encoder": (s.encoder_heads, t.encoder_heads), "decoder": (s.decoder_heads, t.decoder_heads),
                 "cross": (s.decoder_heads, t.decoder_heads)}
        self.average = {m: self.head_average or heads[m][0] != heads[m][1] for m in self.maps}

    def pair_loss(self, kind, i, j, student_out, teacher_out, rows):
        a_s = getattr(student_out, _MAPS[kind])[i - 1]
        a_t = getattr(teacher_out, _MAPS[kind])[j - 1]
        if self.average[kind]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        # [B, H, Q, K] -> [B, Q, H, K] -> rows of valid queries [N, H, K]
        p_s, p_t = upcast(a_s.transpose(1, 2)[rows]), upcast(a_t.transpose(1, 2)[rows])
        return self.row_losses(p_s, p_t).mean(-1).sum()

    @abstractmethod
    def row_losses(self, p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
        """``[N, H, K]`` student and teacher attention rows -> ``[N, H]``."""


class AttentionKL(AttentionLoss):
    r"""KL divergence from the teacher's attention distribution to the student's, per query row.

    .. math:: \mathcal{L} = \sum_{(s,t)} \sum_{n} \frac{1}{H} \sum_h \sum_k
              a^t_{nhk} \left(\log a^t_{nhk} - \log a^s_{nhk}\right)

    Keys with zero teacher probability (padding, future positions) contribute 0; student
    probabilities are floored at 1e-12 inside the log so a key the student ignores entirely
    gives a large finite loss, not inf. Shapes: ``row_losses([N, H, K], [N, H, K]) -> [N, H]``.

    Example::

        >>> a = torch.softmax(torch.randn(3, 2, 5), -1)
        >>> float(AttentionKL().row_losses(a, a).abs().max()) < 1e-6
        True
    """

    def row_losses(self, p_s, p_t):
        return (torch.xlogy(p_t, p_t) - torch.xlogy(p_t, p_s.clamp_min(1e-12))).sum(-1)


class AttentionMSE(AttentionLoss):
    r"""Squared error between attention rows, summed over keys (TinyBERT's attention loss).

    .. math:: \mathcal{L} = \sum_{(s,t)} \sum_{n} \frac{1}{H} \sum_h \sum_k (a^s_{nhk} - a^t_{nhk})^2

    Summing over keys (rather than averaging) keeps the value independent of how much padding
    a batch has. Shapes: ``row_losses([N, H, K], [N, H, K]) -> [N, H]``.
    """

    def row_losses(self, p_s, p_t):
        return (p_s - p_t).pow(2).sum(-1)
