"""distiller_zoo: each loss against its formula in float64, its properties, and the objective."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.modeling_outputs import Seq2SeqLMOutput

from distiller_zoo import LOSSES, LossConfigError, Objective, VanillaKL, build_loss, cross_entropy_sum


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
    torch.testing.assert_close(vals.double(), kl_reference(z, other, T), rtol=1e-4, atol=1e-5)


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
    # token_losses upcasts only to float32 on purpose; check the same math in float64 directly
    fn = lambda x: loss.token_losses.__func__(loss, x, t).sum()  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-5)


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
    with pytest.raises(LossConfigError, match="unknown loss 'kl'; valid names: vanilla_kl"):
        build_loss("kl")
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
        losses.append(float(loss))
    assert losses[-1] < 0.05 * losses[0] and math.isfinite(losses[-1])
