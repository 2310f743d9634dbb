"""The closed-form chunk gradient (CE alone, CE + the bucketed losses of a top-K teacher, CE + the six
built-in losses against a live teacher) equals autograd."""
from __future__ import annotations

import math

import pytest
import torch

from distiller_zoo import LOSSES, LogitLoss, build_loss
from distiller_zoo.cache import top_k_rows
from distiller_zoo.closed_form import applies
from distiller_zoo.fused import fused_logit_objective
from distiller_zoo.heads import LMHead
from distiller_zoo.teacher import DenseTargets, SparseChunk

SPARSE = sorted(n for n, c in LOSSES.items() if issubclass(c, LogitLoss) and n != "uld")
OPTS = {"jsd": {"beta": 0.3}, "skew_kl": {"skew_alpha": 0.2}, "skew_reverse_kl": {"skew_alpha": 0.2}}


class Sparse:
    """A cached teacher's rows: top-K of ``logits`` with the tail at every temperature."""
    outputs = None

    def __init__(self, logits, k, temps):
        self.n = logits.shape[0]
        self.ids, self.logp, tail = top_k_rows(logits, k, temps)
        self.tail = {t: tail[:, j] for j, t in enumerate(temps)}

    def chunk(self, a, b):
        return SparseChunk(self.ids[a:b], self.logp[a:b], {t: v[a:b] for t, v in self.tail.items()})


def problem(dtype, n=13, d=8, v=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, dtype=dtype, generator=g).requires_grad_()
    weight = torch.randn(v, d, dtype=dtype, generator=g).requires_grad_()
    bias = torch.randn(v, dtype=dtype, generator=g).requires_grad_()
    return hidden, weight, bias, torch.randint(0, v, (n,), generator=g), torch.randn(n, v, generator=g) * 3


def both_paths(hidden, weight, bias, labels, teacher, losses, weights, chunk):
    """(sums, grads) of the chunked path (closed form) and of chunk_size 0 (plain autograd on full logits)."""
    out = []
    for size in (chunk, 0):
        total, sums = fused_logit_objective(hidden, LMHead(weight, bias), labels, teacher, 0.7, losses, weights, size)
        out.append((sums, torch.autograd.grad(total, (hidden, weight, bias))))
    return out


@pytest.mark.parametrize("k", [5, 20], ids=["top5", "whole-vocab"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_every_sparse_loss_at_two_temperatures_equals_autograd(dtype, rtol, k):
    """All six sparse losses at once, at T = 1 and T = 2 (two exp buffers), a trained bias, chunks of
    4 (the last shorter): values and gradients equal plain autograd; K = V is the empty tail."""
    hidden, weight, bias, labels, t_logits = problem(dtype)
    teacher = Sparse(t_logits.to(dtype), k, [1.0, 2.0])
    losses = [build_loss(n, dict(OPTS.get(n, {}), temperature=1.0 + i % 2)) for i, n in enumerate(SPARSE)]
    assert applies(teacher.chunk(0, 4), losses)
    weights = [0.5 + i for i in range(len(losses))]
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, teacher, losses, weights, 4)
    torch.testing.assert_close(s0, s1, rtol=rtol, atol=rtol * 0.1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 0.1 * float(b.abs().max()))


def test_ce_alone_equals_autograd():
    hidden, weight, bias, labels, _ = problem(torch.float64, seed=1)
    assert applies(None, [])
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, None, [], [], 5)
    assert float(s0[0]) == pytest.approx(float(s1[0]), rel=1e-12)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SPARSE)
def test_a_student_sure_beyond_float32_range_takes_autograd_for_those_rows(name, monkeypatch):
    """Rows whose tail mass underflows float32's exp (here: tail logits 150 below the top on odd rows)
    cannot use the closed form's tail sum; they are recomputed through autograd. Values and gradients
    stay finite and equal the plain path; the even rows keep the closed form."""
    hidden, weight, bias, labels, t_logits = problem(torch.float32, seed=2)
    with torch.no_grad():
        weight.mul_(0.01)
        weight[:, 0] = 0.0
        weight[6:, 0] = 1.0       # hidden[:, 0] lifts the tail ids (those beyond the teacher's top-6)
        bias[:6], bias[6:] = 0.0, -150.0
        hidden[::2, 0] = 150.0    # even rows: a tail of ordinary size
        hidden[1::2, 0] = 0.0     # odd rows: ~exp(-150) of the mass in the tail
    t_logits[:, :6] += 20.0       # the teacher's top-6 are ids 0..5, with a small tail of its own
    teacher = Sparse(t_logits, 6, [1.0])
    import distiller_zoo.closed_form as cf
    bad_rows, grads_of = [], cf._logit_grads
    monkeypatch.setattr(cf, "_logit_grads", lambda *a: (lambda r: bad_rows.append(r[2].clone()) or r)(grads_of(*a)))
    loss = build_loss(name, dict(OPTS.get(name, {}), temperature=1.0))
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, teacher, [loss], [1.0], 4)
    assert torch.equal(torch.cat(bad_rows), torch.arange(13) % 2 == 1)
    assert torch.isfinite(s0).all() and all(torch.isfinite(g).all() for g in g0)
    torch.testing.assert_close(s0, s1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_which_losses_take_the_closed_form():
    chunk = Sparse(torch.randn(3, 9), 3, [1.0]).chunk(0, 3)
    assert not applies(chunk, [build_loss("uld", {})])                     # it refuses a sparse teacher

    class Capped(LOSSES["vanilla_kl"]):
        def sparse_token_losses(self, student_logits, teacher):
            return super().sparse_token_losses(student_logits, teacher).clamp(max=1.0)
    assert not applies(chunk, [Capped()])
    assert applies(chunk, [build_loss("vanilla_kl", {}), build_loss("tvd", {})])
    dense = torch.randn(3, 9)   # a live teacher: the six built-in losses, not a subclass (it may change anything)
    assert applies(dense, [build_loss(name, {"temperature": 2.0}) for name in SPARSE])
    assert not applies(dense, [build_loss("vanilla_kl", {}), Capped()])
    for name, opt in [("jsd", "beta"), ("skew_kl", "skew_alpha"), ("skew_reverse_kl", "skew_alpha")]:
        for edge in (0.0, 1.0):   # forward / reverse KL or zero: not worth a route of their own
            assert not applies(dense, [build_loss(name, {opt: edge})])
    assert not applies(dense, [])


def test_minus_inf_teacher_ids_and_tail_stay_finite():
    """A teacher with zero probability at some of its K ids and an empty tail (-inf log-probs)."""
    hidden, weight, bias, labels, t_logits = problem(torch.float32, seed=3)
    t_logits[:, 4:] = -math.inf               # only 4 possible tokens; K = 6 includes 2 impossible ones
    teacher = Sparse(t_logits, 6, [2.0])
    losses = [build_loss(n, dict(OPTS.get(n, {}), temperature=2.0)) for n in SPARSE]
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, teacher, losses, [1.0] * len(losses), 4)
    assert torch.isfinite(s0).all() and all(torch.isfinite(g).all() for g in g0)
    torch.testing.assert_close(s0, s1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_under_bf16_autocast_it_matches_autograd_under_the_same_autocast(kind):
    """The trainer runs the objective inside ``torch.autocast``: the head's matmuls in bf16, the
    softmax math in float32 on both routes (a live teacher's chunks arrive in bf16)."""
    hidden, weight, bias, labels, t_logits = problem(torch.float32, n=40, d=16, v=50, seed=4)
    teacher = Sparse(t_logits, 8, [1.0, 2.0]) if kind == "sparse" else Dense(t_logits.bfloat16())
    losses = [build_loss("vanilla_kl", {"temperature": 2.0}), build_loss("reverse_kl", {}), build_loss("jsd", {})]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, teacher, losses, [0.5, 0.5, 0.3], 16)
    assert s0.dtype == torch.float32 and all(a.dtype == torch.float32 for a in g0)
    torch.testing.assert_close(s0, s1, rtol=1e-4, atol=1e-4)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max()))


class Dense:
    """A live teacher's logits, chunk by chunk."""
    outputs = None

    def __init__(self, logits):
        self.logits, self.n = logits, logits.shape[0]

    def chunk(self, a, b):
        return self.logits[a:b].clone()   # the loss may write over it, as over DenseTargets' chunks


ALL_TWICE = [(name, dict(OPTS.get(name, {}), temperature=t)) for name in SPARSE for t in (1.0, 2.0)]
REPEATED = [("vanilla_kl", {"temperature": 2.0}), ("reverse_kl", {"temperature": 2.0})]   # cross terms shared


@pytest.mark.parametrize("mix", [[m] for m in ALL_TWICE] + [ALL_TWICE + REPEATED, (ALL_TWICE + REPEATED)[::-1]],
                         ids=[f"{n}-T{o['temperature']:g}" for n, o in ALL_TWICE] + ["all", "all-reversed"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_every_loss_against_a_live_teacher_equals_autograd(dtype, rtol, mix):
    """Each of the six alone at T = 1 and T = 2, and all twelve together in both orders with forward and
    reverse KL once more at T = 2 (two exp buffers; losses sharing a temperature's cross terms)."""
    hidden, weight, bias, labels, t_logits = problem(dtype, seed=5)
    losses = [build_loss(name, opts) for name, opts in mix]
    assert applies(t_logits, losses)
    weights = [0.3 + 0.1 * i for i in range(len(losses))]
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, Dense(t_logits.to(dtype)), losses, weights, 4)
    torch.testing.assert_close(s0, s1, rtol=rtol, atol=rtol * 0.1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 0.1 * float(b.abs().max()))


def fallback_rows(monkeypatch) -> list:
    """Records the rows the dense closed form leaves to autograd, chunk by chunk."""
    import distiller_zoo.closed_form as cf
    bad_rows, grads_of = [], cf._dense_grads
    monkeypatch.setattr(cf, "_dense_grads", lambda *a: (lambda r: bad_rows.append(r[2].clone()) or r)(grads_of(*a)))
    return bad_rows


@pytest.mark.parametrize("name", SPARSE)
def test_minus_inf_live_logits_take_autograd_for_those_rows(monkeypatch, name):
    """-inf logits in the teacher (rows 0-3) or the student (row 5, where the teacher disagrees).
    Forward and reverse KL are infinite there: those rows go through autograd, which floors log 0
    (distiller_zoo.logit._kl). The mixtures and TVD are finite, and their closed forms exact there."""
    hidden, weight, bias, labels, t_logits = problem(torch.float32, seed=6)
    t_logits[:4, 2] = -math.inf            # teacher: token 2 impossible on rows 0-3
    labels[labels == 7] = 8
    with torch.no_grad():
        weight[:, 0] = 0.0
        weight[7, 0] = 1e30                # student: hidden[:, 0] moves token 7 alone ...
        hidden[:, 0] = 0.0
        hidden[5, 0] = -1e30               # ... to -inf on row 5
    bad_rows = fallback_rows(monkeypatch)
    loss = build_loss(name, dict(OPTS.get(name, {}), temperature=1.5))
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, Dense(t_logits), [loss], [1.0], 4)
    assert torch.cat(bad_rows).nonzero()[:, 0].tolist() == ([0, 1, 2, 3, 5] if name in ("vanilla_kl", "reverse_kl")
                                                            else [])
    assert torch.isfinite(s0).all() and all(torch.isfinite(g).all() for g in g0)
    torch.testing.assert_close(s0, s1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("name", SPARSE)
def test_where_both_models_underflow_at_a_token_the_mixtures_take_autograd_for_that_row(monkeypatch, name):
    """Token 3 far below both maxima on row 6 (exp underflows to 0 in both): the mixtures' ratios are
    0/0 there, so that row alone goes through autograd; the others need no ratio. All equal autograd."""
    hidden, weight, bias, labels, t_logits = problem(torch.float32, seed=9)
    labels[labels == 3] = 4
    t_logits[6, 3] = -300.0
    with torch.no_grad():
        weight[:, 0] = 0.0
        weight[3, 0] = 1.0
        hidden[:, 0] = 0.0
        hidden[6, 0] = -300.0
    bad_rows = fallback_rows(monkeypatch)
    loss = build_loss(name, OPTS.get(name, {}))
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, Dense(t_logits), [loss], [1.0], 4)
    mixtures = ("jsd", "skew_kl", "skew_reverse_kl")
    assert torch.cat(bad_rows).nonzero()[:, 0].tolist() == ([6] if name in mixtures else [])
    torch.testing.assert_close(s0, s1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_a_teacher_whose_losses_all_weigh_zero_leaves_the_ce_only_step_bitwise():
    """A KD term of weight 0 (the baseline test's distilled student) computes exactly the CE-only step."""
    hidden, weight, bias, labels, t_logits = problem(torch.float32, seed=7)
    out = []
    for teacher in (None, Dense(t_logits), Sparse(t_logits, 5, [1.0])):
        total, sums = fused_logit_objective(hidden, LMHead(weight, bias), labels, teacher, 0.7, [], [], 4)
        out.append((sums, torch.autograd.grad(total, (hidden, weight, bias))))
    for sums, grads in out[1:]:
        assert torch.equal(sums, out[0][0]) and all(torch.equal(a, b) for a, b in zip(grads, out[0][1]))


def test_live_teacher_chunks_are_its_logits_in_one_reused_buffer():
    hidden, weight, bias, _, _ = problem(torch.float32, seed=8)
    head = LMHead(weight.detach(), bias.detach())
    live = DenseTargets(hidden.detach(), head)
    first = live.chunk(0, 4)
    torch.testing.assert_close(first, head(hidden.detach()[:4]), rtol=1e-6, atol=1e-6)
    second = live.chunk(4, 7)     # shorter, in the same storage
    assert second.data_ptr() == first.data_ptr()
    torch.testing.assert_close(second, head(hidden.detach()[4:7]), rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # autocast picks the dtype: a new tensor
        assert live.chunk(0, 4).dtype == torch.bfloat16


def test_at_a_large_vocabulary_the_value_temporaries_go_through_several_row_blocks():
    """V = 40,000: the dense parts work on blocks of 32 rows at most, so 70 rows take three (24, 24, 22)."""
    hidden, weight, bias, labels, t_logits = problem(torch.float32, n=70, d=4, v=40_000, seed=10)
    losses = [build_loss(name, OPTS.get(name, {})) for name in SPARSE]
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, Dense(t_logits), losses, [0.5] * len(losses), 70)
    torch.testing.assert_close(s0, s1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_row_blocks_over_chunks_of_two_sizes_with_a_fallback_row_equal_autograd(monkeypatch):
    """Blocks of 32 rows at most (BLOCK_ENTRIES 1): chunks of 80 rows (three blocks of 27, 27, 26) and 30
    (one), the twelve losses at once, and teacher logit -inf on row 70 (third block), where reverse KL
    is infinite and autograd takes the row. All equal autograd on full logits."""
    import distiller_zoo.closed_form as cf
    monkeypatch.setattr(cf, "BLOCK_ENTRIES", 1)
    hidden, weight, bias, labels, t_logits = problem(torch.float64, n=110, seed=12)
    t_logits = t_logits.double()
    t_logits[70, 2] = -math.inf
    bad_rows = fallback_rows(monkeypatch)
    losses = [build_loss(name, opts) for name, opts in ALL_TWICE]
    weights = [0.3 + 0.1 * i for i in range(len(losses))]
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, Dense(t_logits), losses, weights, 80)
    assert [r.nonzero()[:, 0].tolist() for r in bad_rows] == [[70], []]
    torch.testing.assert_close(s0, s1, rtol=1e-10, atol=1e-11)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11 * float(b.abs().max()))


def test_x_log_y_equals_torch_xlogy_and_floors_y_only_below_the_smallest_normal_float():
    """``_xlogy`` (vectorised; torch.xlogy is a scalar loop on CPU) at 0, 1, normal, subnormal and NaN."""
    from distiller_zoo.closed_form import _xlogy
    tiny = torch.finfo(torch.float32).tiny
    values = torch.tensor([0.0, 1e-42, tiny, 1e-20, 0.3, 1.0, math.nan])
    x, y = values[:, None].expand(7, 7), values[None, :].expand(7, 7)
    ours, ref = _xlogy(x, y, torch.empty(7, 7)), torch.xlogy(x, y)
    assert torch.equal(ours.isnan(), ref.isnan())
    normal_y = (y == 0) | (y >= tiny)   # y = 0 is floored too, and x 0 log 0 = 0 there as in torch.xlogy when x = 0
    same = normal_y & ~ref.isnan() & ((y != 0) | (x == 0))
    torch.testing.assert_close(ours[same], ref[same], rtol=1e-6, atol=0.0)
    changed = ~same & ~ref.isnan()      # x > 0 at a y below tiny: -inf or x log y becomes x log(tiny)
    assert changed.any() and torch.equal(ours[changed], x[changed] * math.log(tiny))


@pytest.mark.parametrize("name", SPARSE)
def test_subnormal_probabilities_stay_in_the_closed_form_and_equal_autograd(monkeypatch, name):
    """exp(z - max) between 1e-45 and 1e-38 (88-103 nats below the maximum) at token 3 in the student
    (rows 0-4), the teacher (rows 5-9) and both (rows 10-12): no row leaves the closed form, and the
    values and gradients equal autograd on full logits."""
    hidden, weight, bias, labels, t_logits = problem(torch.float32, seed=11)
    labels[labels == 3] = 4
    with torch.no_grad():
        weight[:, 0] = 0.0
        weight[3, 0] = 1.0
        hidden[:, 0] = 0.0
        z = hidden.detach() @ weight.detach().t() + bias.detach()
        gap = torch.linspace(89.0, 102.0, 13)
        hidden[:5, 0] = z[:5].amax(-1) - z[:5, 3] - gap[:5]
        hidden[10:, 0] = z[10:].amax(-1) - z[10:, 3] - gap[10:]
        t_logits[5:, 3] = t_logits[5:].amax(-1) - gap[5:]
        z = hidden.detach() @ weight.detach().t() + bias.detach()
    subnormal = lambda lg, rows: ((lg[rows] - lg[rows].amax(-1, keepdim=True)).exp()[:, 3]  # noqa: E731
                                  .lt(torch.finfo(torch.float32).tiny).all())
    assert subnormal(z, slice(0, 5)) and subnormal(t_logits, slice(5, 13)) and subnormal(z, slice(10, 13))
    bad_rows = fallback_rows(monkeypatch)
    loss = build_loss(name, OPTS.get(name, {}))
    (s0, g0), (s1, g1) = both_paths(hidden, weight, bias, labels, Dense(t_logits), [loss], [1.0], 4)
    assert not torch.cat(bad_rows).any()
    torch.testing.assert_close(s0, s1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
