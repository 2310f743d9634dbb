"""The fused chunked objective, the teacher seam, sparse (top-K) teachers and -inf logits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

from distiller_zoo import LOSSES, HiddenMSE, LogitLoss, Objective, build_loss
from distiller_zoo.cache import top_k_rows
from distiller_zoo.fused import fused_logit_objective
from distiller_zoo.heads import decoder_states, lm_head
from distiller_zoo.teacher import LiveTeacher, SparseChunk

LOGIT = sorted(n for n, c in LOSSES.items() if issubclass(c, LogitLoss))
OPTS = {"jsd": {"beta": 0.3}, "skew_kl": {"skew_alpha": 0.2}, "skew_reverse_kl": {"skew_alpha": 0.2}}
V, VOCAB = 60, 55   # 5 padded embedding rows beyond the tokenizer


def t5(d, tie=True):
    return T5ForConditionalGeneration(T5Config(vocab_size=V, d_model=d, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                               decoder_start_token_id=0, dropout_rate=0.0, tie_word_embeddings=tie))


def bart(d):
    m = BartForConditionalGeneration(BartConfig(
        vocab_size=V, d_model=d, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32, dropout=0.0))
    m.final_logits_bias.normal_()   # non-zero, so a forgotten bias shows
    return m


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, VOCAB, (3, 6), generator=g)
    labels[0, 4:] = -100
    labels[2, 2:] = -100
    return {"input_ids": torch.randint(3, VOCAB, (3, 7), generator=g), "attention_mask": torch.ones(3, 7, dtype=torch.long),
            "labels": labels}


def objective(extra=()):
    terms = [(n, 0.4 + 0.1 * i, build_loss(n, dict(OPTS.get(n, {}), temperature=2.0))) for i, n in enumerate(LOGIT)]
    return Objective(0.3, terms + list(extra), vocab_size=VOCAB)


def full_forward(model, b, need=frozenset()):
    dec = model.prepare_decoder_input_ids_from_labels(labels=b["labels"])
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=dec, use_cache=False,
                 output_hidden_states="hidden_states" in need)


def grads(model):
    g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return g


@pytest.mark.parametrize("make", [t5, lambda d: t5(d, tie=False), bart], ids=["t5", "t5-untied", "bart"])
def test_split_head_reproduces_the_models_logits(make):
    torch.manual_seed(0)
    model, b = make(16).eval(), batch()
    _, hidden = decoder_states(model, b)
    torch.testing.assert_close(lm_head(model)(hidden), full_forward(model, b).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [t5, bart], ids=["t5", "bart"])
@pytest.mark.parametrize("chunk", [0, 1, 4, 5, 1000])
def test_fused_objective_equals_the_unchunked_path(make, chunk):
    """CE + all six logit losses: values and gradients of the trainer's fused path equal
    Objective.forward on full logits (float32, 1e-5), with padded vocabulary rows cut off."""
    torch.manual_seed(1)
    s, t, b = make(16), make(24).eval(), batch(1)
    obj = objective()
    ref_total, ref_terms = obj(full_forward(s, b), full_forward(t, b), b["labels"])
    ref_total.backward()
    ref = grads(s)
    out, hidden = decoder_states(s, b)
    total, terms = obj.fused(out, hidden, lm_head(s, VOCAB), LiveTeacher(t, VOCAB).targets(b), b["labels"], None, chunk)
    total.backward()
    got = grads(s)
    assert terms.keys() == ref_terms.keys()
    for k in terms:
        assert float(terms[k]) == pytest.approx(float(ref_terms[k].detach()), rel=1e-5), k
    assert float(total) == pytest.approx(float(ref_total), rel=1e-5)
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-6 * float(ref[n].abs().max()) + 1e-9, msg=n)


def test_compiled_chunks_equal_the_eager_chunks():
    """``compile=True`` (torch.compile of each chunk's loss and gradient): CE + every logit
    loss, a trained bias, a dense teacher, chunks of unequal length, equal values and gradients
    (~15 s of compiling on 2 CPU cores). Each loss is a subclass here: the built-in ones take the
    closed form either way (test_closed_form.py), a user's subclass the autograd route."""
    from distiller_zoo import closed_form
    from distiller_zoo.heads import LMHead
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(11, 8, generator=g, requires_grad=True)
    weight = torch.randn(20, 8, generator=g, requires_grad=True)
    bias = torch.randn(20, generator=g, requires_grad=True)
    teacher_logits = torch.randn(11, 20, generator=g) * 3
    teacher_logits[:, 3] = -math.inf
    labels = torch.randint(4, 20, (11,), generator=g)

    class Dense:
        n, outputs = 11, None

        def chunk(self, a, b):
            return teacher_logits[a:b]
    losses = [build_loss(n, dict(OPTS.get(n, {}), temperature=2.0)) for n in LOGIT]
    for loss in losses:
        loss.__class__ = type(f"My{type(loss).__name__}", (type(loss),), {})
    assert not closed_form.applies(teacher_logits, losses)
    weights = [0.5 + i for i in range(len(losses))]
    results = []
    for compile in (False, True):
        total, sums = fused_logit_objective(hidden, LMHead(weight, bias), labels, Dense(), 0.7, losses, weights,
                                            4, compile=compile)
        results.append((sums, torch.autograd.grad(total, (hidden, weight, bias))))
    (s0, g0), (s1, g1) = results
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_fused_chunks_equal_plain_autograd_in_float64():
    """The math: gradients w.r.t. hidden states, head weight and bias, chunked vs whole, in float64."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(13, 8, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(20, 8, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(20, dtype=torch.float64, generator=g, requires_grad=True)
    teacher_logits = torch.randn(13, 20, dtype=torch.float64, generator=g) * 3
    labels = torch.randint(0, 20, (13,), generator=g)

    class Dense:
        n, outputs = 13, None

        def chunk(self, a, b):
            return teacher_logits[a:b]
    losses = [build_loss(n, dict(OPTS.get(n, {}), temperature=1.5)) for n in LOGIT]
    weights = [0.5 + i for i in range(len(losses))]
    from distiller_zoo.heads import LMHead
    results = []
    for chunk in (0, 3):
        total, sums = fused_logit_objective(hidden, LMHead(weight, bias), labels, Dense(), 0.7, losses, weights, chunk)
        results.append((float(total), sums.double(), torch.autograd.grad(total, (hidden, weight, bias))))
    (t0, s0, g0), (t1, s1, g1) = results
    assert t1 == pytest.approx(t0, rel=1e-12)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and the plain path itself against the formulas: CE and forward KL written out
    z = F.linear(hidden.detach(), weight.detach(), bias.detach())
    ce = -(z.log_softmax(-1).gather(-1, labels[:, None])).sum()
    p, log_q = (teacher_logits / 1.5).softmax(-1), (z / 1.5).log_softmax(-1)
    kl = 1.5 ** 2 * (p * (p.log() - log_q)).sum()
    assert float(s0[0]) == pytest.approx(float(ce), rel=1e-6)   # sums are float32
    assert float(s0[1 + LOGIT.index("vanilla_kl")]) == pytest.approx(float(kl), rel=1e-6)


def test_feature_losses_still_read_full_outputs_in_the_fused_path():
    torch.manual_seed(3)
    s, t, b = bart(16), bart(24).eval(), batch(3)
    feat = HiddenMSE(stacks="decoder", layers="uniform")
    obj = objective([("hidden_mse", 0.7, feat)])
    obj.bind(s.config, t.config)
    need = obj.requires
    ref_total, ref_terms = obj(full_forward(s, b, need), full_forward(t, b, need), b["labels"])
    out, hidden = decoder_states(s, b, need)
    total, terms = obj.fused(out, hidden, lm_head(s, VOCAB), LiveTeacher(t, VOCAB).targets(b, need), b["labels"],
                             b["attention_mask"], 4)
    assert float(terms["hidden_mse"]) == pytest.approx(float(ref_terms["hidden_mse"]), rel=1e-5)
    assert float(total) == pytest.approx(float(ref_total), rel=1e-5)


# ----------------------------------------------------------------------------------- -inf logits
def make(name, T=1.0):
    return build_loss(name, dict(OPTS.get(name, {}), temperature=T))


def ref64(name, s, t, T=1.0):
    """Dense float64 reference, with 0 log 0 = 0 and the documented floor for log 0 in the second
    argument of a KL (log of float32's smallest normal, a finite stand-in for +inf)."""
    floor = math.log(torch.finfo(torch.float32).tiny)
    log_q, log_p = (s.double() / T).log_softmax(-1), (t.double() / T).log_softmax(-1)

    def kl(la, lb):
        a = la.exp()
        lb = torch.where(lb == -math.inf, torch.full_like(lb, floor), lb)
        return torch.where(a > 0, a * (la - lb), torch.zeros_like(a)).sum(-1)

    def mix(la, lb, w):
        return (w * la.exp() + (1 - w) * lb.exp()).log()
    o = OPTS.get(name, {})
    if name == "vanilla_kl":
        v = kl(log_p, log_q)
    elif name == "reverse_kl":
        v = kl(log_q, log_p)
    elif name == "jsd":
        m = mix(log_p, log_q, o["beta"])
        v = o["beta"] * kl(log_p, m) + (1 - o["beta"]) * kl(log_q, m)
    elif name == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    elif name == "uld":
        return (log_p.exp().sort(-1).values - log_q.exp().sort(-1).values).abs().sum(-1)
    elif name == "skew_kl":
        v = kl(log_p, mix(log_p, log_q, o["skew_alpha"]))
    else:
        v = kl(log_q, mix(log_q, log_p, o["skew_alpha"]))
    return v * T * T


@pytest.mark.parametrize("where", ["teacher", "student", "both"])
@pytest.mark.parametrize("name", LOGIT)
def test_minus_inf_logits_give_finite_values_and_gradients(name, where):
    """The issue's example: logits randn(1, 1, 5) with [..., 0] = -inf; it gave NaN for five losses."""
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g)
    if where in ("student", "both"):
        s[..., 0] = -math.inf
    if where in ("teacher", "both"):
        t[..., 0] = -math.inf
    s.requires_grad_()
    t.requires_grad_()
    v = make(name, 2.0).token_losses(s, t)
    v.sum().backward()
    assert torch.isfinite(v).all() and (v >= 0).all()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    assert float(v) == pytest.approx(float(ref64(name, s.detach(), t.detach(), 2.0)), rel=1e-5, abs=1e-6)
    if where == "both":   # a token impossible for both models changes nothing
        rest = make(name, 2.0).token_losses(s.detach()[:, 1:], t.detach()[:, 1:])
        assert float(v) == pytest.approx(float(rest), rel=1e-5, abs=1e-7)
        assert float(s.grad[0, 0]) == 0.0


# ----------------------------------------------------------------------------------- sparse teacher
def bucket_ref(name, s, t, k, T):
    """Dense float64 reference on K + 1 buckets: the teacher's top-K ids and one rest bucket."""
    ids = t.double().topk(k, dim=-1).indices
    lq, lp = (s.double() / T).log_softmax(-1), (t.double() / T).log_softmax(-1)

    def buckets(l):
        top = l.gather(-1, ids)
        rest = (1 - top.exp().sum(-1, keepdim=True)).clamp_min(0).log()
        return torch.cat([top, rest], -1)
    bq, bp = buckets(lq), buckets(lp)
    # feed the bucket distributions as logits (log-probs are valid logits) to the dense reference
    return ref64(name, bq * T, bp * T, T)


SPARSE = [n for n in LOGIT if n != "uld"]   # uld needs the whole sorted distribution: refused below


def test_uld_refuses_a_sparse_teacher():
    ids, logp, tail = top_k_rows(torch.randn(2, 9), 3, [1.0])
    with pytest.raises(ValueError, match="remove distill.teacher_cache or the uld loss"):
        make("uld").chunk_losses(torch.randn(2, 9), SparseChunk(ids, logp, {1.0: tail[:, 0]}))


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("name", SPARSE)
def test_sparse_teacher_matches_the_bucketed_dense_reference(name, T):
    g = torch.Generator().manual_seed(5)
    s = (torch.randn(6, 30, generator=g) * 2).requires_grad_()
    t = torch.randn(6, 30, generator=g) * 2
    ids, logp, tail = top_k_rows(t, 5, [1.0, T])
    chunk = SparseChunk(ids, logp, {1.0: tail[:, 0], T: tail[:, 1]})
    v = make(name, T).chunk_losses(s, chunk)
    torch.testing.assert_close(v.double(), bucket_ref(name, s.detach(), t, 5, T), rtol=1e-4, atol=1e-6)
    v.sum().backward()
    assert torch.isfinite(s.grad).all()
    # the sparse value is a lower bound of the full-vocabulary one (every loss is an f-divergence)
    assert (v <= make(name, T).token_losses(s.detach(), t) + 1e-5).all()


@pytest.mark.parametrize("name", SPARSE)
def test_sparse_teacher_with_the_whole_vocabulary_is_the_dense_loss(name):
    """K = V: the tail is empty (-inf), and the loss equals the dense one, value and gradient."""
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(4, 12, generator=g).requires_grad_(), torch.randn(4, 12, generator=g)
    ids, logp, tail = top_k_rows(t, 12, [2.0])
    sparse = make(name, 2.0).chunk_losses(s, SparseChunk(ids, logp, {2.0: tail[:, 0]}))
    (gs,) = torch.autograd.grad(sparse.sum(), s)
    dense = make(name, 2.0).token_losses(s, t)
    (gd,) = torch.autograd.grad(dense.sum(), s)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gs, gd, rtol=1e-4, atol=1e-6)


def test_the_default_chunk_holds_128_positions_at_t5s_vocabulary_and_more_below_it():
    from distiller_zoo.fused import positions_per_chunk
    assert positions_per_chunk(None, 32128) == 128
    assert positions_per_chunk(None, 50265) == 128           # BART: never fewer than 128
    assert positions_per_chunk(None, 2000) == 2056           # 128 x 32,128 logits
    assert positions_per_chunk(7, 2000) == 7 and positions_per_chunk(0, 2000) == 0   # as configured


def test_a_second_backward_through_the_fused_objective_raises_instead_of_scaling_twice():
    """backward scales the stored gradients in place (no [V, d] copy): the first backward equals the
    plain path's, a second one through a retained graph fails loudly instead of scaling them twice."""
    from distiller_zoo.heads import LMHead
    g = torch.Generator().manual_seed(2)
    h, w, labels = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g), torch.randint(0, 7, (5,), generator=g)
    grads_of = []
    for chunk in (2, 0):
        hc, wc = h.clone().requires_grad_(), w.clone().requires_grad_()
        total, _ = fused_logit_objective(hc, LMHead(wc, None), labels, None, 1.0, [], [], chunk)
        (3 * total).backward(retain_graph=True)
        grads_of.append((hc.grad, wc.grad, total))
    for a, b in zip(grads_of[0][:2], grads_of[1][:2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (3 * grads_of[0][2]).backward()
