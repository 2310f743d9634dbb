"""The fused, chunked logit objective: CE and logit losses from decoder states, O(chunk x V) memory.

Per chunk of the N unmasked target positions: the student's logits through its own head,
the teacher's chunk from the seam, every term and its gradient with respect to the hidden
chunk and the head's weight/bias, all in one pass (the design of Liger-Kernel's
``fused_linear_distillation``). Only ``[chunk, V]`` tensors ever exist; the gradients are
stored during the forward and scaled by the incoming gradient in ``backward``.
``chunk_size=0`` is the plain path: one chunk of all N positions through ordinary autograd
(full logits held until backward), kept for comparison.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distiller_zoo import closed_form
from distiller_zoo.base import LogitLoss, upcast
from distiller_zoo.heads import LMHead


def chunk_terms(logits: torch.Tensor, labels: torch.Tensor, teacher_chunk,
                losses: list[LogitLoss]) -> torch.Tensor:
    """``[1 + len(losses)]`` sums over one chunk: CE, then each logit loss (float32)."""
    z = upcast(logits)
    ce = F.cross_entropy(z, labels, reduction="sum")
    return torch.stack([ce, *(loss.chunk_losses(z, teacher_chunk).sum() for loss in losses)])


def _weighted_terms(h, w, b, labels, teacher_chunk, losses, w_vec):
    """``(weights . terms, terms)`` of one chunk: the function whose gradient the chunk loop needs."""
    terms = chunk_terms(F.linear(h, w, b), labels, teacher_chunk, losses)
    return (terms * w_vec).sum(), terms


def _eager_grads(need_b, h, w, b, labels, teacher_chunk, losses, w_vec):
    """``(grads of (h, w[, b]), terms)`` through ordinary autograd."""
    with torch.enable_grad():
        h, w = h.requires_grad_(), w.requires_grad_()
        b = None if b is None else b.requires_grad_(need_b)
        total, terms = _weighted_terms(h, w, b, labels, teacher_chunk, losses, w_vec)
        return torch.autograd.grad(total, (h, w, b) if need_b else (h, w)), terms.detach()


# torch.compile of the same function: the elementwise passes over the [chunk, V] logits (two
# log-softmaxes, the loss terms, their backward) fuse into a few loops, ~1.5x faster chunk math
# after a one-off compile (~15 s on CPU). Dynamic shapes, so the shorter last chunk reuses it.
# One compiled function with and one without a trained bias; dynamo guards on the losses.
_COMPILED: dict[bool, object] = {}


def _compiled_grads(need_b, h, w, b, labels, teacher_chunk, losses, w_vec):
    if need_b not in _COMPILED:
        argnums = (0, 1, 2) if need_b else (0, 1)
        _COMPILED[need_b] = torch.compile(torch.func.grad_and_value(_weighted_terms, argnums=argnums, has_aux=True),
                                          dynamic=True)
    grads, (_, terms) = _COMPILED[need_b](h, w, b, labels, teacher_chunk, losses, w_vec)
    return grads, terms


class _FusedChunks(torch.autograd.Function):
    """Forward: the term sums and, chunk by chunk, the gradient of ``weights . terms``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, teacher, losses, weights, chunk_size, compile):
        need_b = bias is not None and bias.requires_grad   # BART's final_logits_bias is a buffer
        grad_h, grad_w = torch.zeros_like(hidden), torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if need_b else None
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32   # float64 in the math tests
        sums = torch.zeros(len(weights), dtype=acc, device=hidden.device)
        w_vec = torch.tensor(weights, dtype=acc, device=hidden.device)
        chunk_grads = _compiled_grads if compile else _eager_grads
        closed = closed_form.ClosedForm(fallback=_eager_grads)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            t_chunk = None if teacher is None or not losses else teacher.chunk(start, end)   # CE alone: unread
            args = (need_b, hidden[start:end].detach(), weight.detach(), None if bias is None else bias.detach(),
                    labels[start:end], t_chunk, losses, w_vec)
            into = (grad_h[start:end], grad_w, grad_b)
            # CE alone, a cached teacher, the built-in losses of a live one: no autograd over [n, V]
            if closed_form.applies(t_chunk, losses):
                terms = closed(into, *args)
            else:
                grads, terms = chunk_grads(*args)
                closed_form.add_grads(into, grads)
            sums += terms.detach()
        ctx.save_for_backward(grad_h, grad_w, *(() if grad_b is None else (grad_b,)))
        ctx.mark_non_differentiable(sums)
        return (sums * w_vec).sum(), sums

    @staticmethod
    def backward(ctx, grad_total, _grad_sums):
        # scaled in place, no [V, d] copy; a second backward through the graph then raises (version check)
        grads = [g.mul_(grad_total) for g in ctx.saved_tensors]
        return grads[0], grads[1], grads[2] if len(grads) > 2 else None, None, None, None, None, None, None


# The default chunk's [positions, V] size: 128 positions at T5's vocabulary, ~16 MB per buffer. Chunks of
# 256 were no faster, and with the teacher's forward first (training/trainer.py) their 33 MB buffers held
# ~40 MB more of the step's peak at t5-small-base.
CHUNK_LOGITS = 128 * 32_128


def positions_per_chunk(chunk_size: int | None, vocab: int) -> int:
    """``chunk_size`` as configured; None: 128 positions, more below T5's vocabulary (buffers of the same
    ~16 MB, fewer and larger matmuls: at V = 2,000 that is 2,056 positions, one chunk for most batches)."""
    return max(128, CHUNK_LOGITS // vocab) if chunk_size is None else chunk_size


def fused_logit_objective(hidden: torch.Tensor, head: LMHead, labels: torch.Tensor, teacher,
                          ce_weight: float, losses: list[LogitLoss], weights: list[float], chunk_size: int | None,
                          compile: bool = False):
    """``(ce_weight * CE + sum_i weights_i * loss_i, [CE, loss_1, ...])``, all sums over N positions.

    hidden ``[N, d]`` (the student's final decoder states at the unmasked positions), labels
    ``[N]``, teacher a ``TeacherTargets`` over the same N positions (None for CE alone).
    Losses with weight 0 should not be passed: they would cost a full pass for nothing.
    ``compile``: run each chunk's loss and gradient through ``torch.compile`` (same values)."""
    all_weights = [float(ce_weight), *map(float, weights)]
    chunk_size = positions_per_chunk(chunk_size, head.weight.shape[0])
    if chunk_size <= 0:   # the plain path: full [N, V] logits, ordinary autograd
        terms = chunk_terms(head(hidden), labels, None if teacher is None else teacher.chunk(0, hidden.shape[0]),
                            losses)
        return (terms * torch.tensor(all_weights, dtype=terms.dtype, device=terms.device)).sum(), terms.detach()
    return _FusedChunks.apply(hidden, head.weight, head.bias, labels, teacher, losses, all_weights, chunk_size,
                              compile)
