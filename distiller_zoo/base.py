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

Logit losses subclass :class:`LogitLoss` and implement only ``divergence`` on the softened
log-probabilities of the N unmasked target positions. Masking, vocabulary slicing, the
temperature and summation live in one place, so the fused chunked objective, a cached
sparse teacher or a cross-tokenizer alignment feed them without touching the losses.
Every caller reads ``divergence`` through :meth:`LogitLoss.checked_divergence`, which refuses a
result that is not one value per row; :func:`probe` tries a loss on a tiny input before training.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError, one_line

IGNORE_INDEX = -100


class LossConfigError(ValueError, UserError):
    """A loss name or option in the config is wrong, or a loss's code failed (a one-line user error)."""


class LossOutputError(LossConfigError, UserError):
    """A loss's ``divergence`` returned something other than one value per row. A config error when
    found by :func:`probe`, a one-line :class:`UserError` when found in training."""


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
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0 and finite, got {temperature!r}")
        self.temperature = float(temperature)
        self.vocab_size: int | None = None

    def forward(self, student_out, teacher_out, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        s, t = gather_target_logits(student_out.logits, teacher_out.logits, labels, self.vocab_size)
        return self.token_losses(s, t).sum()

    @abstractmethod
    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        """Softened log-probabilities of student ``q`` and teacher ``p``, ``[N, M]`` -> ``[N]``."""

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``[N, V]`` logits of both models -> ``[N]`` per-token loss (dense teacher)."""
        t = self.temperature
        return self.checked_divergence(F.log_softmax(student_logits / t, dim=-1),
                                       F.log_softmax(teacher_logits / t, dim=-1))

    def checked_divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        """``divergence`` with its shape checked: every caller goes through here, so a user's loss
        that returns a scalar or ``[N, V]`` is refused instead of silently reduced by ``.sum()``."""
        out = user_call(f"loss {loss_path(self)!r}: divergence", self.divergence, log_q, log_p,
                        refusals=(RuntimeError,))  # torch's own (out of memory) pass through
        if not isinstance(out, torch.Tensor) or out.shape != log_q.shape[:1] or not out.is_floating_point():
            got = f"a {type(out).__name__}" if not isinstance(out, torch.Tensor) else \
                f"{_shape(out.shape)} of {str(out.dtype).replace('torch.', '')}"
            raise LossOutputError(f"loss {loss_path(self)!r}: divergence must return one real value per row, shape "
                                  f"{_shape(log_q.shape[:1])} for {_shape(log_q.shape)} inputs; got {got}")
        return out

    def sparse_token_losses(self, student_logits: torch.Tensor, teacher) -> torch.Tensor:
        """``[N, V]`` student logits against a top-K teacher (a ``SparseChunk``) -> ``[N]``.

        Both distributions are compared on K + 1 buckets: the teacher's K ids and one "rest"
        bucket holding the remaining mass (the teacher's stored tail; the student's
        ``1 - sum_K q``). Every loss here is an f-divergence, so this is a lower bound of the
        full-vocabulary value, exact when the teacher's tail is empty."""
        t = self.temperature
        log_q = F.log_softmax(student_logits / t, dim=-1)
        ids = teacher.ids.long()
        if ids.shape[-1] >= log_q.shape[-1]:
            log_q_rest = torch.full_like(log_q[:, 0], -math.inf)     # the K ids are the whole vocabulary
        else:
            log_q_rest = log_q.scatter(-1, ids, -math.inf).logsumexp(-1)
        log_q = torch.cat([log_q.gather(-1, ids), log_q_rest.unsqueeze(-1)], dim=-1)
        return self.checked_divergence(log_q, teacher.buckets(t))

    def aligned_token_losses(self, student_logits: torch.Tensor, teacher) -> torch.Tensor:
        """``[n, V]`` student logits against a teacher with another tokenizer (an ``AlignedChunk``) -> ``[n]``.

        At the aligned rows both distributions are taken over the shared sub-vocabulary (the
        student ids ``teacher.vmap.student_ids``), each renormalised there; rows without a
        teacher signal get 0."""
        t, rows = self.temperature, teacher.rows
        log_q = F.log_softmax(student_logits[rows][:, teacher.vmap.student_ids] / t, dim=-1)
        per_row = self.checked_divergence(log_q, teacher.shared_logp(t))
        return student_logits.new_zeros(teacher.n, dtype=per_row.dtype).index_add(0, rows, per_row)

    def chunk_losses(self, student_logits: torch.Tensor, teacher) -> torch.Tensor:
        """Per-token loss against one chunk of the teacher seam: dense logits, sparse top-K, or aligned
        (another tokenizer)."""
        if isinstance(teacher, torch.Tensor):
            v = min(student_logits.shape[-1], teacher.shape[-1])
            return self.token_losses(student_logits[:, :v], upcast(teacher[:, :v]))
        from distiller_zoo.cross_teacher import AlignedChunk   # (it imports this module)
        if isinstance(teacher, AlignedChunk):
            return self.aligned_token_losses(student_logits, teacher)
        return self.sparse_token_losses(student_logits, teacher)

    def describe(self) -> str:
        return f"{type(self).__name__}(T={self.temperature:g})"


def loss_path(loss: nn.Module) -> str:
    """``module:Class``, the config name of a user's loss (messages name the loss by it)."""
    return f"{type(loss).__module__}:{type(loss).__qualname__}"


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def user_call(what: str, fn, *args, refusals: tuple = (ValueError, TypeError), **kwargs):
    """``fn(*args, **kwargs)``, a call into a loss's (maybe a user's) code: an exit or an error becomes a
    one-line :class:`LossConfigError` naming ``what``, so that a user's module cannot end the run
    silently. ``refusals`` (the documented ways to refuse options) and Ctrl-C pass through."""
    try:
        return fn(*args, **kwargs)
    except (LossConfigError, KeyboardInterrupt):
        raise
    except SystemExit as e:
        code = "" if e.code is None else repr(e.code)
        raise LossConfigError(f"{what} called sys.exit({code}); a loss must not exit the program") from None
    except BaseException as e:  # noqa: BLE001 - whatever a user's code raises (GeneratorExit too) is one line
        if isinstance(e, refusals):
            raise
        raise LossConfigError(f"{what} raised {type(e).__name__}: {one_line(e, 120)}") from None


def probe(loss: DistillationLoss) -> None:
    """Call a logit loss's ``divergence`` on a tiny input and refuse a wrong shape, a non-tensor or a
    non-finite result, before anything is trained or written."""
    if not isinstance(loss, LogitLoss):
        return
    # fixed values, not the global RNG: probing must not change the training's random stream
    z = torch.arange(15, dtype=torch.float32).reshape(3, 5).sin()
    log_q, log_p = F.log_softmax(z, -1), F.log_softmax(z.flip(0), -1)
    out = user_call(f"loss {loss_path(loss)!r}: divergence", loss.checked_divergence, log_q, log_p, refusals=())
    if not torch.isfinite(out).all():
        raise LossOutputError(f"loss {loss_path(loss)!r}: divergence returned {out.tolist()} (not finite) on a "
                              f"small valid input; it must return finite values")
    user_call(f"loss {loss_path(loss)!r}: describe()", loss.describe, refusals=())


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
