"""distiller_zoo: each loss against its formula in float64, its properties, and the objective."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.modeling_outputs import Seq2SeqLMOutput

from distiller_zoo import (LOSSES, GeneralizedJSD, LogitLoss, LossConfigError, Objective, ReverseKL, SkewKL,
                           SkewReverseKL, TotalVariation, VanillaKL, build_loss, cross_entropy_sum)

LOGIT_LOSSES = {name: cls for name, cls in LOSSES.items() if issubclass(cls, LogitLoss)}


def kl_reference(s, t, T):
    """T^2 * sum_v p(v) (log p(v) - log q(v)) per row, straight from the definition, in float64."""
    s, t = s.double() / T, t.double() / T
    p = torch.exp(t) / torch.exp(t).sum(-1, keepdim=True)
    q = torch.exp(s) / torch.exp(s).sum(-1, keepdim=True)
    return T * T * (p * (torch.log(p) - torch.log(q))).sum(-1)


def out(logits):
    return Seq2SeqLMOutput(logits=logits)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
def test_vanilla_kl_matches_the_formula(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g) * 3, torch.randn(2, 5, 11, generator=g) * 3
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    got = VanillaKL(temperature=T)(out(s), out(t), labels)
    mask = labels != -100
    expect = kl_reference(s[mask], t[mask], T).sum()
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(expect), rel=1e-5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(2, 40), st.floats(0.25, 8.0), st.floats(0.1, 10.0))
def test_vanilla_kl_properties(n, v, T, scale):
    g = torch.Generator().manual_seed(n * 1000 + v)
    z = torch.randn(n, v, generator=g) * scale
    loss = VanillaKL(temperature=T)
    assert loss.token_losses(z, z).abs().max() < 1e-4                      # zero when they agree
    other = torch.randn(n, v, generator=g) * scale
    vals = loss.token_losses(z, other)
    assert (vals >= -1e-5).all()                                           # KL is non-negative
    # float32 cancellation in log p - log q is amplified by T^2, hence the T^2-scaled tolerance
    torch.testing.assert_close(vals.double(), kl_reference(z, other, T), rtol=1e-3, atol=1e-6 * T * T)


def test_masked_positions_change_nothing():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 4, 7, generator=g), torch.randn(1, 4, 7, generator=g)
    labels = torch.tensor([[3, 4, -100, -100]])
    base = VanillaKL()(out(s), out(t), labels)
    s2, t2 = s.clone(), t.clone()
    s2[:, 2:] += 100 * torch.randn(1, 2, 7, generator=g)
    t2[:, 2:] -= 50
    assert torch.equal(VanillaKL()(out(s2), out(t2), labels), base)


def test_gradients_pass_gradcheck():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, generator=g, dtype=torch.float64)
    loss = VanillaKL(temperature=2.0)
    assert torch.autograd.gradcheck(lambda x: loss.token_losses(x, t).sum(), (s,), eps=1e-6, atol=1e-5)


def test_padded_vocabulary_rows_are_ignored():
    """T5: 32,100 tokenizer ids, 32,128 logits; the extra rows must not change the loss."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(1, 3, 10, generator=g), torch.randn(1, 3, 10, generator=g)
    labels = torch.tensor([[1, 2, 3]])
    loss = VanillaKL()
    loss.vocab_size = 8
    padded_s, padded_t = s.clone(), t.clone()
    padded_s[..., 8:], padded_t[..., 8:] = 30.0, -30.0  # garbage in the padded rows
    expect = kl_reference(s[0, :, :8], t[0, :, :8], 1.0).sum()
    assert float(loss(out(padded_s), out(padded_t), labels)) == pytest.approx(float(expect), rel=1e-5)
    assert float(cross_entropy_sum(padded_s, labels, 8)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(s[0, :, :8].double(), labels[0], reduction="sum")), rel=1e-5)


def test_bf16_logits_are_upcast_inside_the_softmax():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(1, 4, 50, generator=g), torch.randn(1, 4, 50, generator=g)
    labels = torch.ones(1, 4, dtype=torch.long)
    got = VanillaKL(temperature=2.0)(out(s.bfloat16()), out(t.bfloat16()), labels)
    assert got.dtype == torch.float32
    expect = kl_reference(s.bfloat16().float()[0], t.bfloat16().float()[0], 2.0).sum()
    assert float(got) == pytest.approx(float(expect), rel=1e-4)


def test_objective_combines_terms_and_prints_its_formula():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 9, generator=g), torch.randn(2, 3, 9, generator=g)
    labels = torch.tensor([[1, 2, -100], [3, 4, 5]])
    obj = Objective(0.3, [("vanilla_kl", 0.7, VanillaKL(temperature=2.0))], vocab_size=9)
    total, terms = obj(out(s), out(t), labels)
    assert obj.formula() == "loss = 0.3 * CE + 0.7 * VanillaKL(T=2)"
    ce = torch.nn.functional.cross_entropy(s.double().reshape(-1, 9), labels.reshape(-1), reduction="sum")
    mask = labels != -100
    kd = kl_reference(s[mask], t[mask], 2.0).sum()
    assert float(terms["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(total) == pytest.approx(float(0.3 * ce + 0.7 * kd), rel=1e-5)
    assert obj.requires == {"logits"}
    # "CE + lambda * KD" form
    assert Objective(1.0, [("vanilla_kl", 0.7, VanillaKL())], 9).formula() == "loss = 1 * CE + 0.7 * VanillaKL(T=1)"


def test_build_loss_by_name_with_clear_errors():
    assert isinstance(build_loss("vanilla_kl", {"temperature": 3.0}), VanillaKL)
    assert set(LOSSES) >= {"vanilla_kl"}
    with pytest.raises(LossConfigError, match="unknown loss 'kl'; valid names: ") as e:
        build_loss("kl")
    assert ", ".join(sorted(LOSSES)) in str(e.value) and "'my_pkg.my_module:MyLoss'" in str(e.value)
    with pytest.raises(LossConfigError, match="has no option 'temp'; its options: temperature"):
        build_loss("vanilla_kl", {"temp": 2})
    with pytest.raises(LossConfigError, match="temperature must be > 0"):
        build_loss("vanilla_kl", {"temperature": 0})


def test_vanilla_kl_drives_a_student_towards_its_teacher():
    """A short training run on the KD term alone: the loss falls."""
    torch.manual_seed(0)
    teacher_logits = torch.randn(4, 6, 12) * 2
    student = torch.nn.Parameter(torch.zeros(4, 6, 12))
    labels = torch.randint(0, 12, (4, 6))
    loss_fn, opt = VanillaKL(temperature=2.0), torch.optim.Adam([student], lr=0.1)
    losses = []
    for _ in range(50):
        loss = loss_fn(out(student), out(teacher_logits), labels) / labels.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.05 * losses[0] and math.isfinite(losses[-1])


# ============================================================================================
# The modern logit divergences: reverse KL, generalized JSD (GKD), TVD, skew KL / skew reverse
# KL (DistiLLM). Each is checked against a float64 computation written here from its formula
# (probabilities via exp/sum, mixtures in probability space), never through the module's code.


def softmax64(z, T):
    z = z.double() / T
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def kl64(a, b):
    """KL(a || b) per row for float64 probability tensors with no zeros."""
    return (a * (torch.log(a) - torch.log(b))).sum(-1)


def chi2_64(a, b):
    """chi^2(a || b) = sum a^2 / b - 1 per row."""
    return (a * a / b).sum(-1) - 1


def reference(name, s, t, T=1.0, **opt):
    """Per-token loss of ``name`` in float64, straight from the documented definitions."""
    p, q = softmax64(t, T), softmax64(s, T)      # teacher p, student q
    if name == "vanilla_kl":
        return T * T * kl64(p, q)
    if name == "reverse_kl":
        return T * T * kl64(q, p)
    if name == "jsd":
        b = opt.get("beta", 0.5)
        if b == 0:                               # TRL's convention: the edges are the two KLs
            return T * T * kl64(p, q)
        if b == 1:
            return T * T * kl64(q, p)
        m = b * p + (1 - b) * q
        return T * T * (b * kl64(p, m) + (1 - b) * kl64(q, m))
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)       # no temperature factor
    if name == "skew_kl":
        a = opt.get("skew_alpha", 0.1)
        return T * T * kl64(p, a * p + (1 - a) * q)
    if name == "skew_reverse_kl":
        a = opt.get("skew_alpha", 0.1)
        return T * T * kl64(q, a * q + (1 - a) * p)
    if name == "uld":                            # sorted probabilities, the shorter padded (same width here)
        return (p.sort(-1, descending=True).values - q.sort(-1, descending=True).values).abs().sum(-1)
    raise KeyError(name)


CASES = [
    ("vanilla_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {}), ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.9}), ("jsd", {"beta": 0.0}), ("jsd", {"beta": 1.0}),
    ("tvd", {}),
    ("skew_kl", {}), ("skew_kl", {"skew_alpha": 0.5}), ("skew_kl", {"skew_alpha": 0.0}),
    ("skew_kl", {"skew_alpha": 1.0}),
    ("skew_reverse_kl", {}), ("skew_reverse_kl", {"skew_alpha": 0.5}), ("skew_reverse_kl", {"skew_alpha": 0.0}),
    ("skew_reverse_kl", {"skew_alpha": 1.0}),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in opt.items()) for name, opt in CASES]
# Losses that carry a T^2 factor (all but TVD, see TotalVariation's docstring).
T2_SCALED = {"vanilla_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"}


def make(name, opt, T=1.0):
    return build_loss(name, dict(opt, temperature=T))


@pytest.mark.parametrize("name,opt", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
def test_loss_matches_its_formula(name, opt, T):
    g = torch.Generator().manual_seed(10)
    s, t = torch.randn(2, 5, 11, generator=g) * 3, torch.randn(2, 5, 11, generator=g) * 3
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    got = make(name, opt, T)(out(s), out(t), labels)
    mask = labels != -100
    expect = reference(name, s[mask], t[mask], T, **opt).sum()
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(float(expect), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name,opt", CASES, ids=CASE_IDS)
def test_loss_is_zero_when_student_equals_teacher(name, opt):
    g = torch.Generator().manual_seed(11)
    for scale in (0.1, 3.0, 30.0):
        z = torch.randn(6, 13, generator=g) * scale
        for T in (0.5, 2.0):
            loss = make(name, opt, T)
            assert float(loss.token_losses(z, z).abs().max()) < 1e-5
            assert float(loss.token_losses(z.double(), z.double()).abs().max()) < 1e-12


@pytest.mark.parametrize("name,opt", CASES, ids=CASE_IDS)
def test_loss_gradients_pass_gradcheck(name, opt):
    g = torch.Generator().manual_seed(12)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = make(name, opt, 2.0)
    # token_losses keeps its input dtype, so float64 in -> float64 math; check both arguments
    assert torch.autograd.gradcheck(lambda a, b: loss.token_losses(a, b).sum(), (s, t), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name,opt", CASES, ids=CASE_IDS)
def test_loss_ignores_masked_positions(name, opt):
    g = torch.Generator().manual_seed(13)
    s, t = torch.randn(2, 4, 7, generator=g), torch.randn(2, 4, 7, generator=g)
    labels = torch.tensor([[3, 4, -100, -100], [-100, 1, 2, -100]])
    loss = make(name, opt)
    base = loss(out(s), out(t), labels)
    s2, t2 = s.clone(), t.clone()
    masked = labels == -100
    s2[masked] += 100 * torch.randn(int(masked.sum()), 7, generator=g)
    t2[masked] -= 50
    assert torch.equal(loss(out(s2), out(t2), labels), base)


@pytest.mark.parametrize("name,opt", CASES, ids=CASE_IDS)
def test_loss_ignores_padded_vocabulary_rows(name, opt):
    g = torch.Generator().manual_seed(14)
    s, t = torch.randn(1, 3, 10, generator=g), torch.randn(1, 3, 10, generator=g)
    labels = torch.tensor([[1, 2, 3]])
    loss = make(name, opt, 2.0)
    loss.vocab_size = 8
    padded_s, padded_t = s.clone(), t.clone()
    padded_s[..., 8:], padded_t[..., 8:] = 30.0, -30.0
    expect = reference(name, s[0, :, :8], t[0, :, :8], 2.0, **opt).sum()
    assert float(loss(out(padded_s), out(padded_t), labels)) == pytest.approx(float(expect), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name,opt", CASES, ids=CASE_IDS)
def test_loss_upcasts_bf16_logits(name, opt):
    g = torch.Generator().manual_seed(15)
    s, t = torch.randn(1, 4, 50, generator=g), torch.randn(1, 4, 50, generator=g)
    labels = torch.ones(1, 4, dtype=torch.long)
    got = make(name, opt, 2.0)(out(s.bfloat16()), out(t.bfloat16()), labels)
    assert got.dtype == torch.float32
    expect = reference(name, s.bfloat16().float()[0], t.bfloat16().float()[0], 2.0, **opt).sum()
    assert float(got) == pytest.approx(float(expect), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name,opt", CASES, ids=CASE_IDS)
def test_loss_survives_underflowing_probabilities(name, opt):
    """Logits 500 apart: many probabilities are exactly 0 in float32; no NaN/inf in value or gradient."""
    g = torch.Generator().manual_seed(16)
    s = (torch.randn(4, 20, generator=g) * 500).requires_grad_()
    t = torch.randn(4, 20, generator=g) * 500
    vals = make(name, opt).token_losses(s, t)
    vals.sum().backward()
    assert torch.isfinite(vals).all() and (vals >= 0).all() and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", sorted(T2_SCALED) + ["tvd"])
def test_temperature_scaling_is_as_documented(name):
    """KL-type divergences shrink like 1/T^2 at high T, so T^2 * D(T) tends to a constant; TVD
    (not rescaled) shrinks like 1/T. Doubling a large T: ratio -> 1 for the T^2 losses, -> 2 for TVD."""
    g = torch.Generator().manual_seed(17)
    s, t = torch.randn(4, 11, generator=g, dtype=torch.float64) * 3, torch.randn(4, 11, generator=g, dtype=torch.float64) * 3
    ratio = float(make(name, {}, 200.0).token_losses(s, t).sum() / make(name, {}, 400.0).token_losses(s, t).sum())
    assert ratio == pytest.approx(2.0 if name == "tvd" else 1.0, rel=5e-3)
    # and the explicit factor: the value at T is T^2 (resp. 1) times the divergence of the softened distributions
    for T in (0.5, 3.0):
        unscaled = make(name, {}, T).token_losses(s, t) / (T * T if name in T2_SCALED else 1.0)
        torch.testing.assert_close(unscaled, reference(name, s, t, T) / (T * T if name in T2_SCALED else 1.0))


@pytest.mark.parametrize("T", [0.5, 1.0, 3.0])
def test_skew_alpha_zero_is_plain_kl_and_one_is_zero(T):
    g = torch.Generator().manual_seed(18)
    s, t = torch.randn(5, 9, generator=g) * 2, torch.randn(5, 9, generator=g) * 2
    torch.testing.assert_close(SkewKL(0.0, T).token_losses(s, t), VanillaKL(T).token_losses(s, t))
    torch.testing.assert_close(SkewReverseKL(0.0, T).token_losses(s, t), ReverseKL(T).token_losses(s, t))
    assert SkewKL(1.0, T).token_losses(s, t).abs().max() == 0
    assert SkewReverseKL(1.0, T).token_losses(s, t).abs().max() == 0
    # and the reverse variants really are the mirror images: swap student and teacher
    torch.testing.assert_close(SkewReverseKL(0.3, T).token_losses(s, t), SkewKL(0.3, T).token_losses(t, s))
    torch.testing.assert_close(ReverseKL(T).token_losses(s, t), VanillaKL(T).token_losses(t, s))


@pytest.mark.parametrize("T", [0.5, 1.0, 3.0])
def test_jsd_edges_are_forward_and_reverse_kl(T):
    """TRL's convention: beta=0 -> KL(teacher || student), beta=1 -> KL(student || teacher)."""
    g = torch.Generator().manual_seed(19)
    s, t = torch.randn(5, 9, generator=g) * 2, torch.randn(5, 9, generator=g) * 2
    torch.testing.assert_close(GeneralizedJSD(0.0, T).token_losses(s, t), VanillaKL(T).token_losses(s, t))
    torch.testing.assert_close(GeneralizedJSD(1.0, T).token_losses(s, t), ReverseKL(T).token_losses(s, t))
    # the two KLs differ here, so the direction is really being tested
    assert not torch.allclose(VanillaKL(T).token_losses(s, t), ReverseKL(T).token_losses(s, t), rtol=1e-2)


@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-4])
def test_jsd_near_the_edges_is_the_edge_kl_times_the_distance_to_the_edge(eps):
    """The mixture formula tends to 0 at both edges, not to the KLs; what tends to the KL is
    its slope: JSD(b) = b KL(p||q) - b^2/2 chi2(p||q) + O(b^3), and symmetrically near b = 1.
    So |JSD(eps)/eps - KL(p||q)| <= eps * chi2(p||q) (documented tolerance), and the value
    itself jumps at the edge: JSD(eps) ~ eps * JSD(0)."""
    g = torch.Generator().manual_seed(20)
    s, t = torch.randn(6, 9, generator=g, dtype=torch.float64), torch.randn(6, 9, generator=g, dtype=torch.float64)
    p, q = softmax64(t, 1.0), softmax64(s, 1.0)
    near0 = GeneralizedJSD(eps).token_losses(s, t)
    near1 = GeneralizedJSD(1 - eps).token_losses(s, t)
    assert ((near0 / eps - kl64(p, q)).abs() <= eps * chi2_64(p, q) + 1e-9).all()
    assert ((near1 / eps - kl64(q, p)).abs() <= eps * chi2_64(q, p) + 1e-9).all()
    # the second-order term has the documented sign and size
    second = (near0 - eps * kl64(p, q)) / (eps * eps * chi2_64(p, q))
    assert second.max() < 0 and (eps > 1e-3 or ((second + 0.5).abs() < 0.05).all())
    # the edge itself is a different number: JSD(eps) is ~eps times the beta = 0 value
    edge0 = GeneralizedJSD(0.0).token_losses(s, t)
    assert (near0 < 2 * eps * edge0).all()


# ---- properties (hypothesis) -----------------------------------------------------------------


def _pair(n, v, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=torch.float64) * scale, \
        torch.randn(n, v, generator=g, dtype=torch.float64) * scale


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(LOGIT_LOSSES)), st.integers(1, 5), st.integers(2, 30), st.floats(0.25, 6.0),
       st.floats(0.05, 8.0), st.integers(0, 2**16))
def test_every_loss_is_non_negative_and_matches_reference(name, n, v, T, scale, seed):
    s, t = _pair(n, v, scale, seed)
    loss = make(name, {}, T)
    vals = loss.token_losses(s, t)
    assert vals.shape == (n,)
    assert (vals >= -1e-12).all()
    torch.testing.assert_close(vals, reference(name, s, t, T), rtol=1e-7, atol=1e-10)
    # float32 path agrees with the float64 truth too
    torch.testing.assert_close(loss.token_losses(s.float(), t.float()).double(), vals, rtol=1e-3, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(2, 30), st.floats(0.25, 6.0), st.floats(0.05, 20.0), st.integers(0, 2**16))
def test_tvd_lies_in_unit_interval_and_is_symmetric(n, v, T, scale, seed):
    s, t = _pair(n, v, scale, seed)
    vals = TotalVariation(T).token_losses(s, t)
    assert ((vals >= 0) & (vals <= 1 + 1e-12)).all()
    torch.testing.assert_close(vals, TotalVariation(T).token_losses(t, s))
    # Pinsker: TVD <= sqrt(KL / 2), for both directions of KL
    p, q = softmax64(t, T), softmax64(s, T)
    assert (vals <= torch.sqrt(torch.minimum(kl64(p, q), kl64(q, p)).clamp_min(0) / 2) + 1e-9).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(2, 30), st.floats(0.05, 0.95), st.floats(0.05, 8.0), st.integers(0, 2**16))
def test_jsd_properties(n, v, beta, scale, seed):
    s, t = _pair(n, v, scale, seed)
    p, q = softmax64(t, 1.0), softmax64(s, 1.0)
    half = GeneralizedJSD(0.5).token_losses(s, t)
    torch.testing.assert_close(half, GeneralizedJSD(0.5).token_losses(t, s))       # symmetric at beta = 0.5
    assert (half <= math.log(2) + 1e-12).all()                                         # classic JSD bound
    vals = GeneralizedJSD(beta).token_losses(s, t)
    # swapping the roles of student and teacher is the same as beta -> 1 - beta
    torch.testing.assert_close(vals, GeneralizedJSD(1 - beta).token_losses(t, s))
    # convexity of KL in its second argument: JSD(b) <= b (1 - b) (KL(p||q) + KL(q||p))
    assert (vals >= -1e-12).all()
    assert (vals <= beta * (1 - beta) * (kl64(p, q) + kl64(q, p)) + 1e-9).all()
    # mixture weights: JSD(b) <= -b log b - (1 - b) log(1 - b) (the entropy of the weights)
    assert (vals <= -beta * math.log(beta) - (1 - beta) * math.log1p(-beta) + 1e-9).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(2, 30), st.floats(0.0, 1.0), st.floats(0.25, 4.0), st.floats(0.05, 20.0),
       st.integers(0, 2**16))
def test_skew_kl_bounds(n, v, alpha, T, scale, seed):
    """0 <= SKL <= min((1 - alpha) KL, log(1/alpha)) per token, and the same for the reverse one."""
    s, t = _pair(n, v, scale, seed)
    p, q = softmax64(t, T), softmax64(s, T)
    skl = SkewKL(alpha, T).token_losses(s, t) / (T * T)
    srkl = SkewReverseKL(alpha, T).token_losses(s, t) / (T * T)
    log_inv_alpha = math.inf if alpha == 0 else -math.log(alpha)
    for vals, plain in ((skl, kl64(p, q)), (srkl, kl64(q, p))):
        assert (vals >= -1e-12).all()
        assert (vals <= (1 - alpha) * plain + 1e-9).all()
        assert (vals <= log_inv_alpha + 1e-9).all()


@settings(max_examples=20, deadline=None)
@given(st.floats(0.01, 0.99), st.integers(0, 2**16))
def test_skew_kl_is_bounded_even_for_disjoint_supports(alpha, seed):
    """Plain KL is unbounded when the student puts ~0 mass where the teacher is; the skew one is not."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(3, 8, generator=g, dtype=torch.float64)
    s = t.clone()
    s[:, t.argmax(-1)] -= 600                                    # student: ~e^-600 where the teacher peaks
    assert (VanillaKL().token_losses(s, t) > 10).all()
    assert (SkewKL(alpha).token_losses(s, t) <= -math.log(alpha) + 1e-9).all()
    assert (SkewReverseKL(alpha).token_losses(t, s) <= -math.log(alpha) + 1e-9).all()


# ---- configuration and training ----------------------------------------------------------------


def test_every_registered_loss_builds_with_defaults_and_rejects_bad_options():
    assert set(LOGIT_LOSSES) == {"vanilla_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl", "uld"}
    for name, cls in LOGIT_LOSSES.items():
        loss = build_loss(name)
        assert type(loss) is cls and isinstance(loss, LogitLoss) and loss.requires == {"logits"}
        z = torch.randn(2, 5)
        assert loss.token_losses(z, z.flip(-1)).shape == (2,)
        with pytest.raises(LossConfigError, match="temperature must be > 0"):
            build_loss(name, {"temperature": -1.0})
        with pytest.raises(LossConfigError, match="has no option 'tau'"):
            build_loss(name, {"tau": 2.0})
    for name, option in (("jsd", "beta"), ("skew_kl", "skew_alpha"), ("skew_reverse_kl", "skew_alpha")):
        for bad in (-0.1, 1.5, float("nan"), float("inf")):
            with pytest.raises(LossConfigError, match=rf"loss '{name}': {option} must be in \[0, 1\]"):
                build_loss(name, {option: bad})
        for bad in ("0.5", None, True):
            with pytest.raises(LossConfigError, match=rf"{option} must be a number in \[0, 1\]"):
                build_loss(name, {option: bad})
        assert getattr(build_loss(name, {option: 1}), option) == 1.0            # ints are fine
    with pytest.raises(LossConfigError, match="its options: beta, temperature"):
        build_loss("jsd", {"alpha": 0.5})


def test_defaults_and_descriptions():
    assert GeneralizedJSD().beta == 0.5
    assert SkewKL().skew_alpha == 0.1 and SkewReverseKL().skew_alpha == 0.1          # DistiLLM's default
    assert build_loss("jsd").describe() == "JSD(beta=0.5, T=1)"
    assert build_loss("jsd", {"beta": 0.1, "temperature": 2}).describe() == "JSD(beta=0.1, T=2)"
    assert build_loss("reverse_kl", {"temperature": 2}).describe() == "ReverseKL(T=2)"
    assert build_loss("tvd").describe() == "TVD(T=1)"
    assert build_loss("skew_kl").describe() == "SkewKL(alpha=0.1, T=1)"
    assert build_loss("skew_reverse_kl", {"skew_alpha": 0.3}).describe() == "SkewReverseKL(alpha=0.3, T=1)"
    obj = Objective(0.5, [("jsd", 0.5, build_loss("jsd")), ("tvd", 1.0, build_loss("tvd"))], vocab_size=9)
    assert obj.formula() == "loss = 0.5 * CE + 0.5 * JSD(beta=0.5, T=1) + 1 * TVD(T=1)"


# uld ignores which token holds which mass (it matches sorted shapes), so it cannot pull a student
# onto the teacher's tokens alone; tests/test_cross_tokenizer.py trains it beside CE and skew_kl.
TRAIN_CASES = [(name, {}) for name in sorted(LOGIT_LOSSES) if name != "uld"] + [("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.9}),
                                                         ("skew_kl", {"skew_alpha": 0.5})]


@pytest.mark.parametrize("name,opt", TRAIN_CASES, ids=[n + "".join(f"-{k}={v}" for k, v in o.items())
                                                        for n, o in TRAIN_CASES])
def test_every_loss_drives_a_student_towards_its_teacher(name, opt):
    """A short training run on the KD term alone: the loss falls, and the student's
    distribution gets close to the teacher's (checked with an independent metric)."""
    torch.manual_seed(0)
    teacher_logits = torch.randn(4, 6, 12) * 2
    student = torch.nn.Parameter(torch.zeros(4, 6, 12))
    labels = torch.randint(0, 12, (4, 6))
    loss_fn, opt_ = make(name, opt), torch.optim.Adam([student], lr=0.1)
    losses = []
    for _ in range(60):
        loss = loss_fn(out(student), out(teacher_logits), labels) / labels.numel()
        opt_.zero_grad()
        loss.backward()
        opt_.step()
        losses.append(float(loss.detach()))
    assert math.isfinite(losses[-1]) and losses[-1] < 0.1 * losses[0]
    tvd = reference("tvd", student.detach().reshape(-1, 12), teacher_logits.reshape(-1, 12)).mean()
    assert float(tvd) < 0.1
