"""CE, the bucketed losses of a top-K teacher and forward KL, with their gradient in closed form: no
autograd over ``[n, V]``.

Against a sparse teacher (:class:`~distiller_zoo.teacher.SparseChunk`) every logit loss reads the
student only through ``K + 1`` bucket log-probabilities per position (base.py): at temperature T,
with ``q = softmax(z / T)``,

.. math::
    \\ell_k = \\log q_k \\;(k \\in K), \\qquad \\ell_r = \\log \\textstyle\\sum_{j \\notin K} q_j .

So the loss is a function of a ``[n, K + 1]`` tensor: autograd gives ``g = dL/d\\ell`` there
cheaply, and the chain rule back to the logits has a closed form (``G = sum g``):

.. math::
    \\frac{\\partial L}{\\partial z_j} = \\frac{1}{T}\\Big(g_j - q_j G\\Big) \\;(j \\in K), \\qquad
    \\frac{\\partial L}{\\partial z_j} = \\frac{q_j}{T}\\Big(\\frac{g_r}{q_r} - G\\Big) \\;(j \\notin K),

and CE adds ``w_ce (softmax(z) - onehot(label))``. Off the K ids the gradient is a per-row
multiple of ``exp((z - max) / T)``: one buffer, computed in place, then the head's two matmuls.
The autograd route (fused.py) instead materialises a log-softmax, a masked copy and their
backward per loss: about three times the elementwise work.

The rest mass is summed over the tail only (the K entries zeroed first), so it is exact in
relative terms. Where it underflows (a student more than ~80 nats sure, at T), that row is
recomputed through autograd; the same for every row when a loss keeps its own sparse formula.

Against a live (dense) teacher forward KL and skew KL have one here (``_dense_grads``): every
loss of ``log q`` has the gradient ``(g - q G) / T`` with ``g = dL/d log q``, elementwise for these
two (``T^2 (p - q)`` and ``-T^2 (1 - a) q p / M``), so a few passes over reused exp buffers replace
autograd. The others need signs or logs of both mixtures, which ``compile_chunks`` fuses better
than eager passes would; they keep the autograd route.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distiller_zoo.base import LogitLoss, upcast
from distiller_zoo.heads import LMHead, Scratch
from distiller_zoo.logit import SkewKL, VanillaKL
from distiller_zoo.teacher import SparseChunk


def applies(teacher_chunk, losses: list[LogitLoss]) -> bool:
    """True for CE alone, a sparse teacher with losses that use the shared bucket formula, or a dense
    teacher with losses of ``dense_closed`` only."""
    if teacher_chunk is None:
        return not losses
    if isinstance(teacher_chunk, torch.Tensor):
        return bool(losses) and all(dense_closed(loss) for loss in losses)
    return isinstance(teacher_chunk, SparseChunk) and all(
        type(loss).sparse_token_losses is LogitLoss.sparse_token_losses
        and type(loss).chunk_losses is LogitLoss.chunk_losses for loss in losses)


class ClosedForm:
    """The closed-form route over the chunks of one fused call, called as fused.py's autograd route
    ``fallback`` is; that takes the rows the closed form cannot (an underflowing tail, ``-inf`` logits).

    Its ``[chunk, V]`` buffers are reused from chunk to chunk (:class:`~distiller_zoo.heads.Scratch`)."""

    def __init__(self, fallback):
        self.fallback, self.scratch = fallback, Scratch()

    def logits(self, h, w, b) -> torch.Tensor:
        """The chunk's student logits ``[n, V]``, float32 or wider, in the reused buffer outside autocast."""
        return upcast(LMHead(w, b).into(h, self.scratch, "z"))

    def __call__(self, need_b, h, w, b, labels, teacher_chunk, losses, w_vec):
        """``(grads of (h, w[, b]), terms)`` of ``w_vec . [CE, loss_1, ...]`` over one chunk."""
        dense = isinstance(teacher_chunk, torch.Tensor)
        if dense and teacher_chunk.shape != (h.shape[0], w.shape[0]):   # another vocabulary size: sliced there
            return self.fallback(need_b, h, w, b, labels, teacher_chunk, losses, w_vec)
        route = _dense_grads if dense else _logit_grads
        dz, terms, bad, teacher_rows = route(self.logits(h, w, b), labels, teacher_chunk, losses, w_vec, self.scratch)
        rows = bad.nonzero()[:, 0]   # one device sync per chunk
        rows = rows if rows.numel() else None
        if rows is not None:
            dz[rows] = 0.0
        grads = [dz.mm(w).to(h.dtype), dz.t().mm(h).to(w.dtype)] + ([dz.sum(0).to(b.dtype)] if need_b else [])
        if rows is not None:
            sub, sub_terms = self.fallback(need_b, h[rows], w, b, labels[rows], teacher_rows(rows), losses, w_vec)
            grads[0][rows] = sub[0].to(h.dtype)
            for mine, theirs in zip(grads[1:], sub[1:]):
                mine += theirs
            terms = terms + sub_terms
        return tuple(grads), terms


def _logit_grads(z, labels, teacher, losses, w_vec, buffer):
    """``(dL/dz, terms, bad rows, the teacher at given rows)``; ``z`` ``[n, V]`` (overwritten), the sums
    of the good rows only; ``buffer`` (a ``Scratch``) gives scratch space for the other temperatures."""
    n, v = z.shape
    m = z.amax(-1, keepdim=True)
    z_label = z.gather(-1, labels[:, None])[:, 0]
    ids = None if teacher is None else teacher.ids.long()
    z_k = None if ids is None else z.gather(-1, ids)
    stats, bad = {}, torch.zeros(n, dtype=torch.bool, device=z.device)
    for t, e in _exps(z, m, {loss.temperature for loss in losses}, buffer).items():
        s, log_q_k, rest = _row_sums(e, ids, z_k, m, t)
        if ids is not None and ids.shape[-1] < v:   # below this the tail has underflowed: autograd recomputes it
            bad |= rest < v * torch.finfo(z.dtype).tiny / torch.finfo(z.dtype).eps
        stats[t] = (e, s, log_q_k, rest)
    e1, s1, _, _ = stats[1.0]
    g, loss_rows = _bucket_grads(stats, losses, w_vec[1:], teacher)
    terms = _good_sums([m[:, 0] + s1.log() - z_label, *loss_rows], bad)
    dz = e1.mul_(((w_vec[0] + (_tail_coef(g, stats, 1.0) if 1.0 in g else 0.0)) / s1)[:, None])
    for t in g:
        if t != 1.0:
            e, s, _, _ = stats[t]
            dz.addcmul_(e, (_tail_coef(g, stats, t) / s)[:, None])
    if ids is not None:   # the K ids: their entries of e were zeroed; the whole gradient goes here
        q1 = (z_k - m) - s1.log()[:, None]
        dz.scatter_add_(-1, ids, w_vec[0] * q1.exp() + sum(_ids_grad(g, stats, t) for t in g))
    return _minus_onehot(dz, labels, w_vec[0]), terms, bad, None if teacher is None else teacher.select


def dense_closed(loss: LogitLoss) -> bool:
    """A live teacher's losses with a closed form: forward KL, and skew KL strictly inside its edges
    (at 0 it is forward KL, at 1 zero; those configurations keep autograd)."""
    return type(loss) is VanillaKL or (type(loss) is SkewKL and 0.0 < loss.skew_alpha < 1.0)


def _dense_grads(z, labels, zt, losses, w_vec, buffer):
    """As ``_logit_grads`` against dense teacher logits ``zt [n, V]`` (overwritten) with the losses of
    ``dense_closed``. With ``p``, ``q`` the softened teacher and student and ``e``, ``e_t`` their
    unnormalised exp buffers at T (normalisers ``S``, ``S_t``):

    - ``T^2 KL(p || q)``: the gradient ``T (q - p)``, the value from the cross term ``sum e_t (zt - z)``;
    - skew KL (``_skew_kl``).

    Rows whose values are not finite (``-inf`` logits, an underflow of both models at one token)
    are left to autograd, which handles them (distiller_zoo.logit._kl), with the teacher's logits
    rebuilt from ``e_t``."""
    n, v = z.shape
    zt = zt.to(z.dtype)
    m, m_t = z.amax(-1, keepdim=True), zt.amax(-1, keepdim=True)
    z_label = z.gather(-1, labels[:, None])[:, 0]
    temps = {loss.temperature for loss in losses}
    e_t = {t: torch.add(m_t / -t, zt, alpha=1 / t, out=buffer(("teacher", t), n, v, z)).exp_() for t in temps}
    teacher = {t: (e, e.sum(-1)) for t, e in e_t.items()}
    forward = {loss.temperature for loss in losses if type(loss) is VanillaKL}
    diff = zt.sub_(z) if forward else zt   # the teacher's logits are not needed any more
    cross = {t: _row_dot(e_t[t], diff) for t in forward}
    stats = {t: (e, e.sum(-1)) for t, e in _exps(z, m, temps, buffer).items()}
    e1, s1 = stats[1.0]
    rows, bad = [m[:, 0] + s1.log() - z_label], torch.zeros(n, dtype=torch.bool, device=z.device)
    coef = {t: 0.0 for t in stats}, {t: 0.0 for t in forward}   # per row, of e and of e_t in dz
    products = []                                               # (tensor, per-row coefficient) in dz
    for i, (w, loss) in enumerate(zip(w_vec[1:], losses)):
        t, (e, s), (et, st) = loss.temperature, stats[loss.temperature], teacher[loss.temperature]
        if type(loss) is VanillaKL:   # + w T (q - p)
            rows.append(t * t * (cross[t] / (t * st) + (m - m_t)[:, 0] / t + s.log() - st.log()))
            coef[0][t], coef[1][t] = coef[0][t] + w * t / s, coef[1][t] - w * t / st
            continue
        value, qr, prod = _skew_kl(e, s, et, st, loss.skew_alpha, buffer(("skew", i), n, v, z), diff)
        k, a = w * t * (1 - loss.skew_alpha), loss.skew_alpha
        rows.append(t * t * value)
        coef[0][t] = coef[0][t] + k * qr / (a * s)
        products.append((prod, -k / (a * s)))
        bad |= ~qr.isfinite()
    bad |= ~torch.stack(rows).isfinite().all(0)
    dz = e1.mul_((w_vec[0] / s1 + coef[0][1.0])[:, None])
    for t, c in coef[0].items():
        if t != 1.0 and torch.is_tensor(c):
            dz.addcmul_(stats[t][0], c[:, None])
    for t, c in coef[1].items():
        dz.addcmul_(e_t[t], c[:, None])
    for prod, c in products:
        dz.addcmul_(prod, c[:, None])
    t0 = next(iter(e_t))
    teacher_rows = lambda rows: t0 * e_t[t0][rows].log() + m_t[rows]  # noqa: E731  (zt to rounding; -inf below ~-87 T)
    return _minus_onehot(dz, labels, w_vec[0]), _good_sums(rows, bad), bad, teacher_rows


def _skew_kl(e, s, e_t, s_t, a, out, scratch):
    """Skew KL ``KL(p || M)``, ``M = a p + (1 - a) q``, at one temperature, without its ``T^2``.

    Its gradient w.r.t. ``log q_j`` is ``-T^2 (1 - a) q_j R_j`` with ``R = p / M``, so (as for every
    loss of ``log q``) the one w.r.t. ``z_j`` is ``T (1 - a) q_j (sum_k q_k R_k - R_j)``. In the exp
    buffers ``R' = a R = e_t / (e_t + c e)``, ``c = (1 - a) S_t / (a S)``: one pass for the
    denominator, one for the division, one ``xlogy`` for the value ``sum_j p_j log R'_j - log a``.

    Returns ``(value [n], sum_j q_j R'_j [n], e * R' [n, V] written over out)``; ``scratch`` takes
    the ``xlogy``. Where both models underflow at a token, ``R'`` is 0/0: NaN, and the row not finite."""
    r = torch.addcmul(e_t, e, ((1 - a) * s_t / (a * s))[:, None], out=out)
    r = torch.div(e_t, r, out=r)
    value = torch.xlogy(e_t, r, out=scratch).sum(-1) / s_t - math.log(a)
    return value, _row_dot(e, r) / s, r.mul_(e)


def _row_dot(a, b) -> torch.Tensor:
    """``[n]``: ``sum_j a_ij b_ij`` without an ``[n, V]`` product (NaN where ``a`` is 0 and ``b`` infinite)."""
    return torch.bmm(a[:, None, :], b[:, :, None])[:, 0, 0]


def _exps(z, m, temps, buffer) -> dict:
    """``{T: exp((z - m) / T)}`` for T = 1 and every T in ``temps``; T = 1 last, in place in ``z``."""
    out = {}
    for t in sorted({1.0, *temps}, key=lambda t: t == 1.0):
        e = z.sub_(m) if t == 1.0 else torch.add(m / -t, z, alpha=1 / t, out=buffer(t, *z.shape, z))
        out[t] = e.exp_()   # <= 1
    return out


def _good_sums(rows: list, bad) -> torch.Tensor:
    """``[len(rows)]``: each per-row vector summed over the rows not left to autograd."""
    good = ~bad
    return torch.stack([r[good].sum() for r in rows])


def _minus_onehot(dz, labels, w_ce):
    """CE's ``- w_ce onehot(label)``: the softmax part is already in ``dz``."""
    return dz.scatter_add_(-1, labels[:, None], (-w_ce).expand(len(labels), 1).to(dz.dtype))


def _row_sums(e, ids, z_k, m, t):
    """From ``e = exp((z - max) / T)``: the normaliser S, ``log q`` at the K ids and the tail sum
    (unnormalised); the K entries of ``e`` are zeroed so that only the tail remains in it."""
    if ids is None:
        return e.sum(-1), None, None
    e_k = e.gather(-1, ids)
    e.scatter_(-1, ids, 0.0)
    rest = e.sum(-1)
    s = rest + e_k.sum(-1)
    return s, (z_k - m) / t - s.log()[:, None], rest


def _bucket_grads(stats, losses, weights, teacher):
    """Autograd on the small ``[n, K + 1]`` bucket tensors: ``({T: dL/d buckets}, per-row loss values)``."""
    leaves = {}
    for t, (_, s, log_q_k, rest) in stats.items():
        if log_q_k is not None:
            leaves[t] = torch.cat([log_q_k, (rest.log() - s.log())[:, None]], -1).requires_grad_()
    if not losses:
        return {}, []
    with torch.enable_grad():
        rows = [loss.divergence(leaves[loss.temperature], teacher.buckets(loss.temperature)) for loss in losses]
        total = sum((w * r.sum() for w, r in zip(weights, rows)))
        used = sorted({loss.temperature for loss in losses})
        g = torch.autograd.grad(total, [leaves[t] for t in used])
    return dict(zip(used, g)), [r.detach() for r in rows]


def _tail_coef(g, stats, t):
    """Per row, ``(g_r / q_r - G) / T``: the gradient off the K ids is ``e * coef / S``."""
    _, s, _, rest = stats[t]
    g_rest = g[t][:, -1]
    per_rest = torch.where(g_rest == 0, 0.0, g_rest / rest.clamp_min(torch.finfo(rest.dtype).tiny))
    return (per_rest * s - g[t].sum(-1)) / t


def _ids_grad(g, stats, t):
    """``(g_k - q_k G) / T`` at the K ids."""
    _, _, log_q_k, _ = stats[t]
    return (g[t][:, :-1] - log_q_k.exp() * g[t].sum(-1, keepdim=True)) / t
