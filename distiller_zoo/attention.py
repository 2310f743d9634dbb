"""Attention distillation: match the student's attention maps to the teacher's (TinyBERT, MiniLM)."""
from __future__ import annotations

from abc import abstractmethod

import torch

from distiller_zoo.base import IGNORE_INDEX, DistillationLoss, upcast
from distiller_zoo.layers import check_layers, check_stacks, layer_pairs, model_dims

# transformers' output field and the query positions of each kind of map
_MAPS = {"encoder": "encoder_attentions", "decoder": "decoder_attentions", "cross": "cross_attentions"}


class AttentionLoss(DistillationLoss):
    """Base of the attention-map losses: layer mapping, head handling, masking.

    Maps ``[B, H, Q, K]`` are compared row by row (one row = one query's distribution over
    keys) for the configured kinds: ``encoder`` self-attention (queries = source positions
    with ``attention_mask`` 1), ``decoder`` self-attention and ``cross`` attention (queries =
    target positions with ``labels != -100``). When the head counts differ, or with
    ``head_average: true``, both maps are first averaged over heads (a head-averaged map is
    still a distribution over keys); otherwise heads are compared one to one and averaged.
    Needs eager attention (transformers' sdpa returns no maps): the trainer selects it.
    Note that transformers returns maps after attention dropout; the teacher runs in eval mode.
    """

    requires = frozenset({"attentions"})

    def __init__(self, maps="all", layers="last", head_average: bool = False):
        super().__init__()
        self.maps = check_stacks(maps, tuple(_MAPS), "maps")
        self.layers = check_layers(layers)
        self.head_average = bool(head_average)
        self.pairs: dict[str, list[tuple[int, int]]] = {}

    def bind(self, student_config, teacher_config) -> None:
        s, t = model_dims(student_config), model_dims(teacher_config)
        counts = {"encoder": (s.encoder_layers, t.encoder_layers), "decoder": (s.decoder_layers, t.decoder_layers),
                  "cross": (s.decoder_layers, t.decoder_layers)}
        heads = {"encoder": (s.encoder_heads, t.encoder_heads), "decoder": (s.decoder_heads, t.decoder_heads),
                 "cross": (s.decoder_heads, t.decoder_heads)}
        self.pairs = {m: layer_pairs(self.layers, *counts[m], f"the {m} attention") for m in self.maps}
        if any(0 in p for pairs in self.pairs.values() for p in pairs):
            raise ValueError("layers: attention maps start at layer 1 (there is no embedding attention)")
        self.average = {m: self.head_average or heads[m][0] != heads[m][1] for m in self.maps}

    def forward(self, student_out, teacher_out, labels, attention_mask=None):
        if not self.pairs:
            raise RuntimeError(f"{type(self).__name__}.bind(student_config, teacher_config) was not called")
        total = torch.zeros((), device=labels.device)
        for kind, pairs in self.pairs.items():
            rows = _query_mask(kind, labels, attention_mask)
            for i, j in pairs:
                a_s = getattr(student_out, _MAPS[kind])[i - 1]
                a_t = getattr(teacher_out, _MAPS[kind])[j - 1]
                if self.average[kind]:
                    a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
                # [B, H, Q, K] -> [B, Q, H, K] -> rows of valid queries [N, H, K]
                p_s = upcast(a_s.transpose(1, 2)[rows])
                p_t = upcast(a_t.transpose(1, 2)[rows])
                total = total + self.row_losses(p_s, p_t).mean(-1).sum()
        return total

    @abstractmethod
    def row_losses(self, p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
        """``[N, H, K]`` student and teacher attention rows -> ``[N, H]``."""

    def describe(self) -> str:
        return f"{type(self).__name__}({'+'.join(self.maps)}, layers={self.layers})"


def _query_mask(kind: str, labels, attention_mask):
    if kind != "encoder":
        return labels != IGNORE_INDEX
    if attention_mask is None:
        raise ValueError("encoder attention losses need the source attention_mask")
    return attention_mask.bool()


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
