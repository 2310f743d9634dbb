"""Feature distillation: match the student's hidden states to the teacher's (FitNets, TinyBERT)."""
from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import IGNORE_INDEX, DistillationLoss, upcast
from distiller_zoo.layers import check_layers, check_stacks, layer_pairs, model_dims


class HiddenStateLoss(DistillationLoss):
    """Base of the hidden-state losses: layer mapping, width projection, masking.

    For every configured stack (``encoder``: source positions where ``attention_mask`` is 1;
    ``decoder``: target positions where ``labels != -100``) and every layer pair (s, t)::

        loss = sum_{positions} d(W h_s, h_t)

    with ``h_s [N, d_s]``, ``h_t [N, d_t]`` in float32 and ``W`` a learnable ``d_s -> d_t``
    linear map (one per pair) when the widths differ, identity otherwise. ``W`` trains with the
    student, is saved in checkpoints and is not part of the exported student. Encoder terms sum
    over source positions but the loop divides by target tokens: weight them accordingly.
    """

    requires = frozenset({"hidden_states"})

    def __init__(self, stacks="all", layers="uniform"):
        super().__init__()
        self.stacks = check_stacks(stacks, ("encoder", "decoder"), "stacks")
        self.layers = check_layers(layers)
        self.pairs: dict[str, list[tuple[int, int]]] = {}
        self.projections = nn.ModuleDict()

    def bind(self, student_config, teacher_config) -> None:
        s, t = model_dims(student_config), model_dims(teacher_config)
        counts = {"encoder": (s.encoder_layers, t.encoder_layers), "decoder": (s.decoder_layers, t.decoder_layers)}
        self.pairs = {st: layer_pairs(self.layers, *counts[st], f"the {st}") for st in self.stacks}
        if s.hidden != t.hidden:
            for st, pairs in self.pairs.items():
                for i, j in pairs:
                    self.projections[f"{st}_{i}_{j}"] = nn.Linear(s.hidden, t.hidden, bias=False)

    def forward(self, student_out, teacher_out, labels, attention_mask=None):
        if not self.pairs:
            raise RuntimeError(f"{type(self).__name__}.bind(student_config, teacher_config) was not called")
        total = torch.zeros((), device=labels.device)
        for stack, pairs in self.pairs.items():
            s_states = getattr(student_out, f"{stack}_hidden_states")
            t_states = getattr(teacher_out, f"{stack}_hidden_states")
            mask = _positions(stack, labels, attention_mask)
            for i, j in pairs:
                hs, ht = upcast(s_states[i][mask]), upcast(t_states[j][mask])
                key = f"{stack}_{i}_{j}"
                if key in self.projections:
                    hs = upcast(self.projections[key](hs))
                total = total + self.position_losses(hs, ht).sum()
        return total

    @abstractmethod
    def position_losses(self, hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
        """``[N, d]`` student (projected) and teacher states -> ``[N]``."""

    def describe(self) -> str:
        return f"{type(self).__name__}({'+'.join(self.stacks)}, layers={self.layers})"


def _positions(stack: str, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if stack == "decoder":
        return labels != IGNORE_INDEX
    if attention_mask is None:
        raise ValueError("encoder-side losses need the source attention_mask")
    return attention_mask.bool()


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
