"""Feature distillation: match the student's hidden states to the teacher's (FitNets, TinyBERT)."""
from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import upcast
from distiller_zoo.layers import LayerPairLoss


class HiddenStateLoss(LayerPairLoss):
    """Base of the hidden-state losses: width projection on top of :class:`LayerPairLoss`.

    For every configured stack (``encoder``: source positions where ``attention_mask`` is 1;
    ``decoder``: target positions where ``labels != IGNORE_INDEX``) and every layer pair (s, t)::

        loss = sum_{positions} d(W h_s, h_t)

    with ``h_s [N, d_s]``, ``h_t [N, d_t]`` in float32 and ``W`` a learnable ``d_s -> d_t``
    linear map (one per pair) when the widths differ, identity otherwise. ``W`` trains with the
    student, is saved in checkpoints and is not part of the exported student. Encoder terms sum
    over source positions but the loop divides by target tokens: weight them accordingly.
    """

    requires = frozenset({"hidden_states"})
    KINDS = {"encoder": "encoder", "decoder": "decoder"}

    def __init__(self, stacks="all", layers="uniform"):
        super().__init__(stacks, layers, "stacks")
        self.stacks = self.kinds
        self.projections = nn.ModuleDict()

    def bind_dims(self, s, t) -> None:
        if s.hidden != t.hidden:
            for st, pairs in self.pairs.items():
                for i, j in pairs:
                    self.projections[f"{st}_{i}_{j}"] = nn.Linear(s.hidden, t.hidden, bias=False)

    def pair_loss(self, kind, i, j, student_out, teacher_out, mask):
        hs = upcast(getattr(student_out, f"{kind}_hidden_states")[i][mask])
        ht = upcast(getattr(teacher_out, f"{kind}_hidden_states")[j][mask])
        key = f"{kind}_{i}_{j}"
        if key in self.projections:
            hs = upcast(self.projections[key](hs))
        return self.position_losses(hs, ht).sum()

    @abstractmethod
    def position_losses(self, hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
        """``[N, d]`` student (projected) and teacher states -> ``[N]``."""


class HiddenMSE(HiddenStateLoss):
    r"""Mean squared error between hidden states, averaged over the hidden dimension.

    .. math:: \mathcal{L} = \sum_{(s,t)} \sum_{n} \frac{1}{d_t} \lVert W h^s_{n} - h^t_{n} \rVert_2^2

    Shapes: ``position_losses([N, d_t], [N, d_t]) -> [N]``.

    Example::

        >>> loss = HiddenMSE(stacks="decoder", layers="last")
        >>> h = torch.randn(4, 8)
        >>> float(loss.position_losses(h, h).sum())
        0.0
    """

    def position_losses(self, hs, ht):
        return (hs - ht).pow(2).mean(-1)


class HiddenCosine(HiddenStateLoss):
    r"""Cosine distance between hidden states (scale-free, robust to different norms).

    .. math:: \mathcal{L} = \sum_{(s,t)} \sum_{n} \left(1 - \cos(W h^s_{n}, h^t_{n})\right)

    Shapes: ``position_losses([N, d_t], [N, d_t]) -> [N]``, each value in [0, 2].
    """

    def position_losses(self, hs, ht):
        return 1.0 - F.cosine_similarity(hs, ht, dim=-1, eps=1e-8)
