"""CE, the bucketed losses of a top-K teacher and the losses of a live one, with their gradient in closed
form: no autograd over ``[n, V]``.

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

Against a live (dense) teacher the six built-in losses have one too (``_dense_grads``, ``_DENSE``):
each is a function of ``log q`` with ``g = dL/d log q`` elementwise (``-T^2 p`` for forward KL,
``T^2 (1 - b) q log(q / mix)`` for JSD, ...), so the gradient ``(g - q G) / T`` is a few per-row
multiples of reused exp buffers and at most one product buffer per loss. A subclass of a loss (it
may change anything), custom losses and the mixtures at their edges (beta or alpha 0 or 1) keep the
autograd route, which ``compile_chunks`` fuses.
"""
from __future__ import annotations

import copy
import math

import torch

from distiller_zoo.base import LogitLoss, upcast
from distiller_zoo.heads import LMHead, Scratch
from distiller_zoo.logit import GeneralizedJSD, ReverseKL, SkewKL, SkewReverseKL, TotalVariation, VanillaKL
from distiller_zoo.teacher import SparseChunk


def applies(teacher_chunk, losses: list[LogitLoss]) -> bool:
    """True for CE alone, a sparse teacher with losses that use the shared bucket formula, or a dense
    teacher with built-in losses only (``dense_closed``)."""
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

    def __call__(self, into, need_b, h, w, b, labels, teacher_chunk, losses, w_vec):
        """The terms of ``w_vec . [CE, loss_1, ...]`` over one chunk; its gradients w.r.t. ``(h, w[, b])``
        added to ``into`` (the chunk's rows of the hidden states' gradient, zeros, and the two sums)."""
        dense = isinstance(teacher_chunk, torch.Tensor)
        if dense and teacher_chunk.shape != (h.shape[0], w.shape[0]):   # another vocabulary size: sliced there
            grads, terms = self.fallback(need_b, h, w, b, labels, teacher_chunk, losses, w_vec)
            add_grads(into, grads)
            return terms
        route = _dense_grads if dense else _logit_grads
        dz, terms, bad, teacher_rows = route(self.logits(h, w, b), labels, teacher_chunk, losses, w_vec, self.scratch)
        rows = bad.nonzero()[:, 0]   # one device sync per chunk
        if rows.numel():   # rows the closed form cannot take: autograd's gradient in their place
            dz[rows] = 0.0
            sub, sub_terms = self.fallback(need_b, h[rows], w, b, labels[rows], teacher_rows(rows), losses, w_vec)
            into[0].index_add_(0, rows, sub[0].to(into[0].dtype))
            add_grads(into[1:], sub[1:])
            terms = terms + sub_terms
        _add_mm(into[0], dz, w)
        _add_mm(into[1], dz.t(), h)
        if need_b:
            into[2].add_(dz.sum(0).to(b.dtype))
        return terms


def add_grads(into, grads) -> None:
    """Adds ``grads`` (of ``(h, w[, b])``) to the accumulators ``into`` (the bias's is None when untrained,
    and then ``grads`` is one shorter)."""
    for acc, g in zip(into, grads):
        acc += g.to(acc.dtype)


def _add_mm(acc, a, b) -> None:
    """``acc += a @ b``: in place (no ``[V, d]`` temporary per chunk) unless autocast or the dtypes
    ask for ``mm``'s own rules (a bf16 product under autocast, as autograd computes it there)."""
    if torch.is_autocast_enabled(a.device.type) or not a.dtype == b.dtype == acc.dtype:
        acc += a.mm(b).to(acc.dtype)
    else:
        acc.addmm_(a, b)


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
    terms = _good_sums(torch.stack([m[:, 0] + s1.log() - z_label, *loss_rows]), bad)
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
    """A live teacher's losses with a closed form: the six built-in ones, the mixtures strictly inside
    their edges (jsd at beta 0 / 1 and the skews at alpha 0 are forward / reverse KL, at alpha 1 zero:
    those configurations keep autograd)."""
    mix = getattr(loss, "beta", getattr(loss, "skew_alpha", 0.5))
    return type(loss) in _DENSE and 0.0 < mix < 1.0


class _Temp:
    """One temperature's view of a chunk: ``e = exp((z - m) / T)``, ``e_t`` the teacher's, their row sums
    ``s``, ``s_t``, ``shift = (m - m_t) / T`` and, for forward and reverse KL, the cross terms
    ``sum e_t d`` and ``sum e d`` of ``d = zt - z`` and the product ``e * d``."""

    def __init__(self, e, e_t, shift):
        self.e, self.e_t, self.shift = e, e_t, shift
        self.s, self.s_t = e.sum(-1), e_t.sum(-1)
        self.cross_t = self.cross_s = self.e_diff = None

    def rows(self, rows: slice) -> "_Temp":
        """The same view of some rows."""
        view = copy.copy(self)
        view.__dict__.update({k: x[rows] for k, x in vars(self).items() if x is not None})
        return view


def _diff_terms(at: dict, forward: set, reverse: set, diff, buffer) -> None:
    """The terms of ``d = zt - z`` that forward and reverse KL read, once per temperature: ``sum e_t d``,
    and ``e d`` with its sum. Summed by ``torch.sum`` (a ``bmm`` dot product accumulates with ~1e-5
    relative error over 32,128 entries); the last product is written over ``d``, which is not read after."""
    jobs = [(ReverseKL, t) for t in sorted(reverse)] + [(VanillaKL, t) for t in sorted(forward)]
    for i, (kind, t) in enumerate(jobs):
        key = ("e_diff", t) if kind is ReverseKL else "cross"   # a product to keep, or a temporary
        c, out = at[t], diff if i == len(jobs) - 1 else buffer(key, *diff.shape, diff)
        if kind is ReverseKL:
            c.e_diff = torch.mul(c.e, diff, out=out)
            c.cross_s = c.e_diff.sum(-1)
        else:
            c.cross_t = torch.mul(c.e_t, diff, out=out).sum(-1)


# Rows per block of the dense parts: their temporaries are [block, V], ~2^18 entries (1 MB in float32),
# 32 rows at least (4 MB at T5's vocabulary). Whole-chunk temporaries (3.3 MB at 410 x 2,000) were
# fresh pages every step, and a fresh 4 KB page (~0.9 us to fault in on the bench machine) costs more
# than a few elementwise passes over it; a block's buffers are reused while still in cache.
BLOCK_ENTRIES = 1 << 18


def _dense_grads(z, labels, zt, losses, w_vec, buffer):
    """As ``_logit_grads`` against dense teacher logits ``zt [n, V]`` (overwritten) with the losses of
    ``dense_closed``, row block by row block (``_dense_block``). Rows whose values are not finite
    (``-inf`` logits where a loss is infinite, an underflow of both models at one token) are left
    to autograd (distiller_zoo.logit._kl floors them), with the teacher's logits rebuilt from ``e_t``."""
    n, v = z.shape
    zt = zt.to(z.dtype)
    m, m_t = z.amax(-1, keepdim=True), zt.amax(-1, keepdim=True)
    z_label = z.gather(-1, labels[:, None])[:, 0]
    temps = {loss.temperature for loss in losses}
    forward, reverse = ({loss.temperature for loss in losses if type(loss) is kind} for kind in (VanillaKL, ReverseKL))
    own = len(temps) == 1 and not (forward or reverse)   # zt is read by nothing else: its exp goes over it
    e_t = {t: torch.add(m_t / -t, zt, alpha=1 / t, out=zt if own else buffer(("teacher", t), n, v, z)).exp_()
           for t in temps}
    if forward or reverse:
        zt.sub_(z)   # d = zt - z: the teacher's logits are not needed any more
    at = {t: _Temp(e, e_t[t], (m - m_t)[:, 0] / t) for t, e in _exps(z, m, temps, buffer).items() if t in temps}
    _diff_terms(at, forward, reverse, zt, buffer)
    s1 = at[1.0].s if 1.0 in at else z.sum(-1)    # z is exp(z - m) now (_exps)
    values = torch.empty(1 + len(losses), n, dtype=z.dtype, device=z.device)   # per row: CE, each loss
    values[0] = m[:, 0] + s1.log() - z_label
    bad = ~values[0].isfinite()
    most = min(n, max(32, BLOCK_ENTRIES // v))    # the block buffers' rows, never more in a later chunk
    step = -(-n // -(-n // most))                 # blocks of equal size
    for a in range(0, n, step):
        rows = slice(a, min(a + step, n))
        values[1:, rows], bad_rows = _dense_block(z, rows, at, s1, losses, w_vec, lambda key: buffer(key, most, v, z))
        bad[rows] |= bad_rows
    t0 = next(iter(e_t))
    teacher_rows = lambda rows: t0 * e_t[t0][rows].log() + m_t[rows]  # noqa: E731  (zt to rounding; -inf below ~-87 T)
    return _minus_onehot(z, labels, w_vec[0]), _good_sums(values, bad), bad, teacher_rows


def _dense_block(e1, rows: slice, at, s1, losses, w_vec, block_buffer):
    """``(each loss's values, non-finite rows)`` on ``rows``, and there the gradient w.r.t. the logits
    written over ``e1 = exp(z - m)`` once the parts have read it. Each loss's ``_DENSE`` part gives its
    value and its gradient as per-row multiples of the exp buffers and of a product in its own block
    buffer (``block_buffer(key)``, sliced to the block's rows)."""
    view = {t: c.rows(rows) for t, c in at.items()}
    n = rows.stop - rows.start
    values, coef_e, coef_t, products = [], {}, {}, []   # per temperature and row, of e and of e_t in dz
    tmp = lambda: block_buffer("tmp")[:n]  # noqa: E731  (shared by the parts: a value's temporary)
    for i, (w, loss) in enumerate(zip(w_vec[1:], losses)):
        out = lambda i=i: block_buffer(("part", i))[:n]  # noqa: E731  (the loss's product)
        value, ce, ct, prods = _DENSE[type(loss)](loss, view[loss.temperature], out, tmp)
        values.append(value)
        for coef, c in ((coef_e, ce), (coef_t, ct)):
            if c is not None:
                coef[loss.temperature] = coef.get(loss.temperature, 0.0) + w * c
        products += [(p, w * c) for p, c in prods]
    values = torch.stack(values)
    bad = ~torch.cat([values, torch.stack(list(coef_e.values()))]).isfinite().all(0)
    dz = e1[rows].mul_((w_vec[0] / s1[rows] + coef_e.pop(1.0, 0.0))[:, None])
    for t, c in coef_e.items():
        dz.addcmul_(view[t].e, c[:, None])
    for t, c in coef_t.items():
        dz.addcmul_(view[t].e_t, c[:, None])
    for prod, c in products:
        dz.addcmul_(prod, c[:, None])
    return values, bad


# The dense parts: ``(loss, c: _Temp, out, tmp) -> (value [rows], coefficient of c.e, of c.e_t,
# [(product [rows, V], coefficient)])`` over a block of rows, the gradient w.r.t. the logits being the
# sum of those per-row multiples. Every loss here is a function of ``log q``, so with
# ``g = dL/d log q`` that gradient is ``(g - q G) / T``, ``G = sum g``: per-row constants in ``g / q``
# cancel. ``out()`` gives the loss's own block buffer (its product), ``tmp()`` one for a temporary.


def _forward_kl(loss, c, out, tmp):
    """``T^2 KL(p || q)``: ``g / q = -T^2 p / q``, the gradient ``T (q - p)``; the value from ``sum e_t d``."""
    t = loss.temperature
    value = t * t * (c.cross_t / (t * c.s_t) + c.shift + c.s.log() - c.s_t.log())
    return value, t / c.s, -t / c.s_t, []


def _reverse_kl(loss, c, out, tmp):
    """``T^2 KL(q || p)``: ``g / q = T^2 (log q - log p + 1)``, with ``log q_j - log p_j = -d_j / T`` + a
    per-row constant; the gradient ``T q (log(q / p) - KL)`` = ``(sum e d / S^2) e - e d / S``."""
    t = loss.temperature
    value = t * t * (-c.cross_s / (t * c.s) - c.shift - c.s.log() + c.s_t.log())
    return value, c.cross_s / (c.s * c.s), None, [(c.e_diff, -1 / c.s)]


def _tvd(loss, c, out, tmp):
    """``1/2 sum |p - q|``: ``g = q sign(q - p) / 2``, with ``u = q - p``."""
    u = torch.mul(c.e, (1 / c.s)[:, None], out=out()).addcmul_(c.e_t, (-1 / c.s_t)[:, None])
    value = 0.5 * torch.abs(u, out=tmp()).sum(-1)
    prod = u.sign_().mul_(c.e)                    # e sign(q - p)
    k = 0.5 / (loss.temperature * c.s)
    return value, -k * prod.sum(-1) / c.s, None, [(prod, k)]


def _jsd(loss, c, out, tmp):
    """GKD's JSD, ``mix = b p + (1 - b) q``: ``dL/dq = T^2 (1 - b) log(q / mix)``. With
    ``D = e + k e_t``, ``k = b S / ((1 - b) S_t)``: ``q / mix = (e / D) / (1 - b)`` and
    ``p / mix = (e_t / D) k / b``; two divisions and two ``x log y`` passes."""
    t, b = loss.temperature, loss.beta
    k = b * c.s / ((1 - b) * c.s_t)
    d = torch.addcmul(c.e, c.e_t, k[:, None], out=out())
    p_log = _xlogy(c.e_t, torch.div(c.e_t, d, out=tmp()), tmp()).sum(-1) / c.s_t + (k / b).log()
    prod = _xlogy(c.e, torch.div(c.e, d, out=d), d)         # e log(e / D)
    q_log = prod.sum(-1) / c.s                                  # sum q log(e / D)
    value = t * t * (b * p_log + (1 - b) * (q_log - math.log1p(-b)))
    k_g = t * (1 - b) / c.s
    return value, -k_g * q_log, None, [(prod, k_g)]


def _skew_kl(loss, c, out, tmp):
    """``T^2 KL(p || M)``, ``M = a p + (1 - a) q``: ``g / q = -T^2 (1 - a) R``, ``R = p / M``, so the
    gradient is ``T (1 - a) q (sum q R - R)``. ``R' = a R = e_t / (e_t + k e)``,
    ``k = (1 - a) S_t / (a S)``: one pass for the denominator, one division, one ``x log y`` for the
    value ``sum p log R' - log a``. Where both models underflow at a token ``R'`` is 0/0: NaN."""
    t, a = loss.temperature, loss.skew_alpha
    r = torch.addcmul(c.e_t, c.e, ((1 - a) * c.s_t / (a * c.s))[:, None], out=out())
    r = torch.div(c.e_t, r, out=r)
    value = t * t * (_xlogy(c.e_t, r, tmp()).sum(-1) / c.s_t - math.log(a))
    k = t * (1 - a) / (a * c.s)
    prod = r.mul_(c.e)                             # e R'
    return value, k * prod.sum(-1) / c.s, None, [(prod, -k)]


def _skew_reverse_kl(loss, c, out, tmp):
    """``T^2 KL(q || M)``, ``M = a q + (1 - a) p``: ``g / q = T^2 (log(q / M) + 1 - a q / M)``. With
    ``r = a q / M = e / (e + k e_t)``, ``k = (1 - a) S / (a S_t)``: the gradient
    ``T q (L - sum q L)``, ``L = log r - r``, and the value ``sum q log r - log a``."""
    t, a = loss.temperature, loss.skew_alpha
    r = torch.addcmul(c.e, c.e_t, ((1 - a) * c.s / (a * c.s_t))[:, None], out=out())
    r = torch.div(c.e, r, out=r)
    e_log_r = _xlogy(c.e, r, tmp())
    value = t * t * (e_log_r.sum(-1) / c.s - math.log(a))
    prod, k = torch.sub(e_log_r, r.mul_(c.e), out=r), t / c.s      # e (log r - r)
    return value, -k * prod.sum(-1) / c.s, None, [(prod, k)]


def _xlogy(x, y, out):
    """``x log y`` for ``0 <= y < inf`` in ``out`` (may be ``y``), ``torch.xlogy`` (a scalar loop on CPU, ~10x
    slower) but with ``y`` floored at the smallest normal float: ``0 log 0 = 0``, NaN stays NaN."""
    return torch.clamp(y, min=torch.finfo(y.dtype).tiny, out=out).log_().mul_(x)


_DENSE = {VanillaKL: _forward_kl, ReverseKL: _reverse_kl, TotalVariation: _tvd, GeneralizedJSD: _jsd,
          SkewKL: _skew_kl, SkewReverseKL: _skew_reverse_kl}


def _exps(z, m, temps, buffer) -> dict:
    """``{T: exp((z - m) / T)}`` for T = 1 and every T in ``temps``; T = 1 last, in place in ``z``."""
    out = {}
    for t in sorted({1.0, *temps}, key=lambda t: t == 1.0):
        e = z.sub_(m) if t == 1.0 else torch.add(m / -t, z, alpha=1 / t, out=buffer(t, *z.shape, z))
        out[t] = e.exp_()   # <= 1
    return out


def _good_sums(rows: torch.Tensor, bad) -> torch.Tensor:
    """``[k]``: the per-row values ``rows [k, n]`` summed over the rows not left to autograd."""
    return rows[:, ~bad].sum(-1)


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
        rows = [loss.checked_divergence(leaves[loss.temperature], teacher.buckets(loss.temperature))
                for loss in losses]
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
