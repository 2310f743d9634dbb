"""Architecture introspection, layer maps and :class:`LayerPairLoss`, the skeleton shared by the
feature (hidden-state) and attention losses.

Layer indices follow transformers' ``*_hidden_states`` tuples: 0 is the embedding output and
``i`` (1..L) the output of layer ``i``. For T5 the last entry is taken *after* the stack's
final layer norm (that is what transformers returns); BART has no final layer norm, so its
last entry is the last layer's output. Attention tuples have no embedding entry, so layer
``i`` is ``*_attentions[i - 1]``.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from distiller_zoo.base import IGNORE_INDEX, DistillationLoss


@dataclass(frozen=True)
class Dims:
    encoder_layers: int
    decoder_layers: int
    hidden: int
    encoder_heads: int
    decoder_heads: int


def model_dims(config) -> Dims:
    """Layer counts, width and heads of a T5- or BART-style config (transformers' attribute maps)."""
    enc = config.num_hidden_layers
    dec = getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None) or enc
    heads = config.num_attention_heads
    return Dims(enc, dec, config.hidden_size, heads, getattr(config, "decoder_attention_heads", None) or heads)


def check_layers(spec):
    """Validate a layer-map option before the models are known (ranges are checked in bind)."""
    if spec in ("uniform", "last"):
        return spec
    if isinstance(spec, (list, tuple)) and spec and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) and x >= 0 for x in p)
            for p in spec):
        return [list(p) for p in spec]
    raise ValueError(f"layers must be 'uniform', 'last' or a list of [student, teacher] pairs, got {spec!r}")


def layer_pairs(spec, n_student: int, n_teacher: int, what: str) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 1-based (0 = embeddings where a stack has them).

    ``"uniform"``: student layer i <- teacher layer round(i * Lt / Ls), so the last layers meet;
    ``"last"``: only the last layers; a list ``[[s, t], ...]``: explicit pairs."""
    if spec == "uniform":
        return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
    if spec == "last":
        return [(n_student, n_teacher)]
    for s, t in check_layers(spec):
        if not (0 <= s <= n_student and 0 <= t <= n_teacher):
            raise ValueError(f"layers pair [{s}, {t}] is out of range for {what}: the student has {n_student} "
                             f"layers, the teacher {n_teacher} (0 = embeddings)")
    return [tuple(p) for p in spec]


def check_stacks(value, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    """Normalise a stack option ('encoder', ['encoder', 'decoder'], 'all') to a tuple."""
    items = list(allowed) if value == "all" else ([value] if isinstance(value, str) else list(value or []))
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(f"{name} must be 'all' or some of {', '.join(allowed)}, got {value!r}")
    return tuple(dict.fromkeys(items))


def positions(kind: str, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, L]`` bool mask of the positions a term sums over: source tokens (``attention_mask``)
    for encoder-side terms, target tokens (``labels != IGNORE_INDEX``) for the others."""
    if kind != "encoder":
        return labels != IGNORE_INDEX
    if attention_mask is None:
        raise ValueError("encoder-side losses need the source attention_mask")
    return attention_mask.bool()


class LayerPairLoss(DistillationLoss):
    """A sum over kinds (``encoder``/``decoder`` stacks, or attention maps) and layer pairs (s, t)::

        loss = sum_{kind} sum_{(s, t)} pair_loss(kind, s, t, masked positions)

    Subclasses name their kinds (``KINDS``: kind -> the stack whose layer count maps its layers)
    and implement :meth:`pair_loss`; ``bind`` sizes the layer maps from the two models' configs."""

    KINDS: dict[str, str] = {}

    def __init__(self, kinds, layers, option: str):
        super().__init__()
        self.kinds = check_stacks(kinds, tuple(self.KINDS), option)
        self.layers = check_layers(layers)
        self.pairs: dict[str, list[tuple[int, int]]] = {}

    def bind(self, student_config, teacher_config) -> None:
        s, t = model_dims(student_config), model_dims(teacher_config)
        n = {"encoder": (s.encoder_layers, t.encoder_layers), "decoder": (s.decoder_layers, t.decoder_layers)}
        self.pairs = {k: layer_pairs(self.layers, *n[self.KINDS[k]], f"the {k}") for k in self.kinds}
        self.bind_dims(s, t)

    def bind_dims(self, s: Dims, t: Dims) -> None:
        """Size anything else from the two architectures (after ``self.pairs`` is set)."""

    def forward(self, student_out, teacher_out, labels, attention_mask=None):
        if not self.pairs:
            raise RuntimeError(f"{type(self).__name__}.bind(student_config, teacher_config) was not called")
        total = torch.zeros((), device=labels.device)
        for kind, pairs in self.pairs.items():
            mask = positions(kind, labels, attention_mask)
            for i, j in pairs:
                total = total + self.pair_loss(kind, i, j, student_out, teacher_out, mask)
        return total

    @abstractmethod
    def pair_loss(self, kind: str, i: int, j: int, student_out, teacher_out, mask) -> torch.Tensor:
        """The summed loss between student layer ``i`` and teacher layer ``j`` of ``kind``."""

    def describe(self) -> str:
        return f"{type(self).__name__}({'+'.join(self.kinds)}, layers={self.layers})"
