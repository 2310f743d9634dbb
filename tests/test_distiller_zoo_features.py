"""Feature and attention losses, layer maps and shrink initialisation, checked against float64 formulas."""
from __future__ import annotations

import json

import pytest
import torch
from transformers.modeling_outputs import Seq2SeqLMOutput

from settings import ArchConfig, TokenizerTrainConfig
from distiller_zoo import AttentionKL, AttentionMSE, HiddenCosine, HiddenMSE, Objective, build_loss
from distiller_zoo.layers import layer_pairs, model_dims
from main import main
from models import evenly_spaced, narrow_to, scratch_model, shrink_model, train_tokenizer

TEXTS = ["you are a stupid idiot.", "the landlord is a tired person.", "hello world, this is a test!"] * 20


class Cfg:
    """The few config attributes the losses read (transformers' attribute-map names)."""

    def __init__(self, enc=2, dec=2, hidden=8, heads=2):
        self.num_hidden_layers, self.decoder_layers, self.hidden_size = enc, dec, hidden
        self.num_attention_heads = self.decoder_attention_heads = heads


def states(n_layers, b, t, d, gen, dtype=torch.float64):
    return tuple(torch.randn(b, t, d, generator=gen, dtype=dtype) for _ in range(n_layers + 1))


def maps(n_layers, b, h, q, k, gen, causal=False):
    out = []
    for _ in range(n_layers):
        scores = torch.randn(b, h, q, k, generator=gen, dtype=torch.float64)
        if causal:
            scores = scores.masked_fill(torch.ones(q, k).triu(1).bool(), float("-inf"))
        out.append(scores.softmax(-1))
    return tuple(out)


LABELS = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
SRC_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


# --------------------------------------------------------------------------- layer maps
def test_layer_maps():
    assert layer_pairs("uniform", 3, 6, "x") == [(1, 2), (2, 4), (3, 6)]
    assert layer_pairs("uniform", 2, 2, "x") == [(1, 1), (2, 2)]
    assert layer_pairs("last", 2, 12, "x") == [(2, 12)]
    assert layer_pairs([[0, 0], [2, 5]], 2, 6, "x") == [(0, 0), (2, 5)]
    with pytest.raises(ValueError, match=r"pair \[3, 1\] is out of range for the encoder"):
        layer_pairs([[3, 1]], 2, 6, "the encoder")
    with pytest.raises(ValueError, match="layers must be 'uniform', 'last' or a list"):
        HiddenMSE(layers="every")


# --------------------------------------------------------------------------- hidden states
def hidden_reference(kind, s_out, t_out, pairs, W=None):
    total = torch.zeros((), dtype=torch.float64)
    for stack, mask in (("encoder", SRC_MASK.bool()), ("decoder", LABELS != -100)):
        for i, j in pairs[stack]:
            hs = getattr(s_out, f"{stack}_hidden_states")[i].double()
            ht = getattr(t_out, f"{stack}_hidden_states")[j].double()
            if W is not None:
                hs = hs @ W[f"{stack}_{i}_{j}"].T
            for b in range(hs.shape[0]):
                for p in range(hs.shape[1]):
                    if mask[b, p]:
                        x, y = hs[b, p], ht[b, p]
                        total += ((x - y) ** 2).mean() if kind == "mse" else 1 - x @ y / (x.norm() * y.norm())
    return total


def hidden_outputs(gen, d_s=8, d_t=8, l_s=2, l_t=4, dtype=torch.float64):
    s = Seq2SeqLMOutput(encoder_hidden_states=states(l_s, 2, 5, d_s, gen, dtype),
                        decoder_hidden_states=states(l_s, 2, 4, d_s, gen, dtype))
    t = Seq2SeqLMOutput(encoder_hidden_states=states(l_t, 2, 5, d_t, gen, dtype),
                        decoder_hidden_states=states(l_t, 2, 4, d_t, gen, dtype))
    return s, t


@pytest.mark.parametrize("cls,kind", [(HiddenMSE, "mse"), (HiddenCosine, "cos")])
def test_hidden_losses_match_the_formula_with_equal_widths(cls, kind):
    gen = torch.Generator().manual_seed(0)
    s, t = hidden_outputs(gen)
    loss = cls(stacks="all", layers="uniform")
    loss.bind(Cfg(2, 2, 8), Cfg(4, 4, 8))
    assert loss.pairs == {"encoder": [(1, 2), (2, 4)], "decoder": [(1, 2), (2, 4)]} and not loss.projections
    got = loss(s, t, LABELS, SRC_MASK)
    assert float(got) == pytest.approx(float(hidden_reference(kind, s, t, loss.pairs)), rel=1e-5)
    same = Seq2SeqLMOutput(encoder_hidden_states=t.encoder_hidden_states, decoder_hidden_states=t.decoder_hidden_states)
    equal = cls(layers=[[1, 1], [4, 4]])
    equal.bind(Cfg(4, 4, 8), Cfg(4, 4, 8))
    assert float(equal(same, t, LABELS, SRC_MASK)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("cls,kind", [(HiddenMSE, "mse"), (HiddenCosine, "cos")])
def test_hidden_losses_project_the_student_when_widths_differ(cls, kind):
    gen = torch.Generator().manual_seed(1)
    s, t = hidden_outputs(gen, d_s=6, d_t=10)
    loss = cls(stacks=["decoder"], layers="last")
    loss.bind(Cfg(2, 2, 6), Cfg(4, 4, 10))
    loss.double()  # float64 states keep float64 (only half precision is upcast)
    assert list(loss.projections) == ["decoder_2_4"] and loss.projections["decoder_2_4"].weight.shape == (10, 6)
    W = {k: p.weight.detach().double() for k, p in loss.projections.items()}
    expect = hidden_reference(kind, s, t, {"encoder": [], "decoder": loss.pairs["decoder"]}, W)
    assert loss(s, t, LABELS, SRC_MASK).item() == pytest.approx(float(expect), rel=1e-5)


def test_hidden_loss_masks_and_gradients():
    gen = torch.Generator().manual_seed(2)
    s, t = hidden_outputs(gen, d_s=4, d_t=6)
    loss = HiddenMSE(layers="uniform")
    loss.bind(Cfg(2, 2, 4), Cfg(4, 4, 6))
    loss.double()
    base = loss(s, t, LABELS, SRC_MASK)
    # padding positions (source mask 0, label -100) may hold anything
    for out in (s, t):
        for h in out.encoder_hidden_states:
            h[1, 3:] = 1e3
        for h in out.decoder_hidden_states:
            h[0, 3:], h[1, 2:] = -1e3, 7.0
    assert torch.equal(loss(s, t, LABELS, SRC_MASK), base)
    # gradients w.r.t. the student's states and the projections
    x = s.decoder_hidden_states[2].clone().requires_grad_(True)

    def f(x):
        out = Seq2SeqLMOutput(encoder_hidden_states=s.encoder_hidden_states,
                              decoder_hidden_states=s.decoder_hidden_states[:2] + (x,))
        return loss(out, t, LABELS, SRC_MASK)
    assert torch.autograd.gradcheck(f, (x,))
    base.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in loss.projections.values())


def test_hidden_loss_upcasts_bf16_states():
    gen = torch.Generator().manual_seed(3)
    s, t = hidden_outputs(gen, dtype=torch.bfloat16)
    loss = HiddenMSE(stacks="encoder", layers="last")
    loss.bind(Cfg(2, 2, 8), Cfg(4, 4, 8))
    got = loss(s, t, LABELS, SRC_MASK)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(hidden_reference("mse", s, t, {**loss.pairs, "decoder": []})), rel=1e-4)


# --------------------------------------------------------------------------- attention maps
def attention_reference(kind, s_maps, t_maps, rows, pairs, average):
    total = torch.zeros((), dtype=torch.float64)
    for i, j in pairs:
        a_s, a_t = s_maps[i - 1].double(), t_maps[j - 1].double()
        if average:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        for b in range(a_s.shape[0]):
            for q in range(a_s.shape[2]):
                if not rows[b, q]:
                    continue
                per_head = []
                for h in range(a_s.shape[1]):
                    p, r = a_t[b, h, q], a_s[b, h, q]
                    if kind == "kl":
                        nz = p > 0
                        per_head.append((p[nz] * (p[nz].log() - r[nz].log())).sum())
                    else:
                        per_head.append(((r - p) ** 2).sum())
                total += torch.stack(per_head).mean()
    return total


def attention_outputs(gen, h_s=2, h_t=2, l_s=2, l_t=2):
    s = Seq2SeqLMOutput(encoder_attentions=maps(l_s, 2, h_s, 5, 5, gen), decoder_attentions=maps(l_s, 2, h_s, 4, 4, gen,
                        causal=True), cross_attentions=maps(l_s, 2, h_s, 4, 5, gen))
    t = Seq2SeqLMOutput(encoder_attentions=maps(l_t, 2, h_t, 5, 5, gen), decoder_attentions=maps(l_t, 2, h_t, 4, 4, gen,
                        causal=True), cross_attentions=maps(l_t, 2, h_t, 4, 5, gen))
    return s, t


@pytest.mark.parametrize("cls,kind", [(AttentionKL, "kl"), (AttentionMSE, "mse")])
@pytest.mark.parametrize("heads", [(2, 2), (2, 4)])
def test_attention_losses_match_the_formula(cls, kind, heads):
    gen = torch.Generator().manual_seed(4)
    s, t = attention_outputs(gen, *heads, l_s=2, l_t=3)
    loss = cls(maps="all", layers="uniform")
    loss.bind(Cfg(2, 2, 8, heads[0]), Cfg(3, 3, 8, heads[1]))
    average = heads[0] != heads[1]
    assert loss.average == {"encoder": average, "decoder": average, "cross": average}
    expect = sum(attention_reference(kind, getattr(s, f), getattr(t, f), rows, loss.pairs[m], average)
                 for m, f, rows in (("encoder", "encoder_attentions", SRC_MASK.bool()),
                                    ("decoder", "decoder_attentions", LABELS != -100),
                                    ("cross", "cross_attentions", LABELS != -100)))
    got = loss(s, t, LABELS, SRC_MASK)
    assert torch.isfinite(got) and float(got) == pytest.approx(float(expect), rel=1e-5)
    same = cls(maps="all", layers="uniform")
    same.bind(Cfg(3, 3, 8, heads[1]), Cfg(3, 3, 8, heads[1]))
    assert float(same(t, t, LABELS, SRC_MASK)) == pytest.approx(0.0, abs=1e-6)  # zero when the maps agree


def test_attention_kl_row_gradients_and_options():
    gen = torch.Generator().manual_seed(5)
    p_t = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64).softmax(-1)
    logits = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: AttentionKL().row_losses(z.softmax(-1), p_t).sum(), (logits,))
    assert torch.autograd.gradcheck(lambda z: AttentionMSE().row_losses(z.softmax(-1), p_t).sum(), (logits,))
    loss = AttentionKL(maps="cross", layers=[[0, 1]])
    with pytest.raises(ValueError, match="attention maps start at layer 1"):
        loss.bind(Cfg(), Cfg())
    with pytest.raises(ValueError, match="maps must be 'all' or some of encoder, decoder, cross"):
        AttentionKL(maps=["self"])
    forced = AttentionKL(head_average=True)
    forced.bind(Cfg(heads=2), Cfg(heads=2))
    assert all(forced.average.values())


def test_objective_passes_the_source_mask_and_collects_requirements():
    obj = Objective(1.0, [("hidden_mse", 1.0, HiddenMSE()), ("attention_kl", 0.5, AttentionKL())], vocab_size=10)
    assert obj.requires == {"hidden_states", "attentions"}
    assert obj.formula() == ("loss = 1 * CE + 1 * HiddenMSE(encoder+decoder, layers=uniform) + "
                             "0.5 * AttentionKL(encoder+decoder+cross, layers=last)")


# --------------------------------------------------------------------------- real tiny models
def tiny_pair(d_s=32, d_t=48, arch="bart"):
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=80))
    torch.manual_seed(0)
    teacher = scratch_model(ArchConfig(type=arch, d_model=d_t, heads=4, d_ff=64, encoder_layers=3, decoder_layers=3,
                                       dropout=0.0), tok, attn_implementation="eager").eval()
    student = scratch_model(ArchConfig(type=arch, d_model=d_s, heads=2, d_ff=64, encoder_layers=1, decoder_layers=2,
                                       dropout=0.0), tok, attn_implementation="eager")
    return tok, teacher, student


@pytest.mark.parametrize("name,params", [("hidden_mse", {}), ("hidden_cosine", {"layers": "last"}),
                                         ("attention_kl", {}), ("attention_mse", {"maps": ["cross"]}),
                                         ("vanilla_kl", {"temperature": 2.0}), ("reverse_kl", {}), ("jsd", {}),
                                         ("tvd", {}), ("skew_kl", {}), ("skew_reverse_kl", {})])
@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_each_loss_falls_when_training_a_tiny_student(name, params, arch):
    """Every registered loss, alone, pulls a tiny T5/BART student towards a tiny teacher."""
    tok, teacher, student = tiny_pair(arch=arch)
    loss = build_loss(name, params)
    loss.bind(student.config, teacher.config)
    if hasattr(loss, "vocab_size"):
        loss.vocab_size = len(tok)
    batch = tok(TEXTS[:6], padding=True, return_tensors="pt")
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    need = dict(output_hidden_states=True, output_attentions=True)

    def run(model):
        return model(**batch, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels), **need)
    with torch.no_grad():
        t_out = run(teacher)
    opt = torch.optim.Adam(list(student.parameters()) + list(loss.parameters()), lr=3e-3)
    values = []
    for _ in range(40):
        value = loss(run(student), t_out, labels, batch.attention_mask) / (labels != -100).sum()
        opt.zero_grad()
        value.backward()
        opt.step()
        values.append(value.item())
    assert values[-1] < 0.5 * values[0], values[::8]


def test_model_dims_reads_t5_and_bart_configs():
    _, teacher, student = tiny_pair(arch="t5")
    assert model_dims(teacher.config) == model_dims(teacher.config)
    d = model_dims(student.config)
    assert (d.encoder_layers, d.decoder_layers, d.hidden, d.encoder_heads) == (1, 2, 32, 2)
    _, teacher, _ = tiny_pair(arch="bart")
    d = model_dims(teacher.config)
    assert (d.encoder_layers, d.decoder_layers, d.hidden, d.decoder_heads) == (3, 3, 48, 4)


# --------------------------------------------------------------------------- shrink
def test_evenly_spaced_matches_distilbart():
    assert evenly_spaced(12, 6) == [0, 2, 4, 7, 9, 11]
    assert evenly_spaced(12, 3) == [0, 6, 11] and evenly_spaced(6, 1) == [0] and evenly_spaced(4, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_shrink_copies_evenly_spaced_teacher_layers(arch):
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=80))
    teacher = scratch_model(ArchConfig(type=arch, d_model=32, heads=2, d_ff=64, encoder_layers=4, decoder_layers=4),
                            tok)
    student = shrink_model(teacher, 2, 3)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    stack = "layers" if arch == "bart" else "block"
    for s_i, t_i in enumerate(evenly_spaced(4, 3)):
        for key in (k for k in s_sd if f"decoder.{stack}.{s_i}." in k):
            assert torch.equal(s_sd[key], t_sd[key.replace(f".{stack}.{s_i}.", f".{stack}.{t_i}.")]), key
    for s_i, t_i in enumerate(evenly_spaced(4, 2)):
        for key in (k for k in s_sd if f"encoder.{stack}.{s_i}." in k):
            assert torch.equal(s_sd[key], t_sd[key.replace(f".{stack}.{s_i}.", f".{stack}.{t_i}.")]), key
    assert torch.equal(s_sd["lm_head.weight"], t_sd["lm_head.weight"])
    assert model_dims(student.config).encoder_layers == 2 and model_dims(student.config).decoder_layers == 3
    assert model_dims(teacher.config).encoder_layers == 4  # the teacher's config is untouched
    batch = tok(["hello world"], return_tensors="pt")
    assert torch.isfinite(student(**batch, labels=batch.input_ids).loss)


def test_shrink_refuses_more_layers_than_the_teacher_has():
    from utils.errors import UserError
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=80))
    teacher = scratch_model(ArchConfig(d_model=32, heads=2, d_ff=64, encoder_layers=2, decoder_layers=2), tok)
    with pytest.raises(UserError, match="shrink keeps at most the teacher's 2 encoder and 2 decoder layers"):
        shrink_model(teacher, 3, 1)


def test_narrow_to_keeps_every_head_and_the_same_coordinates_everywhere():
    w = torch.arange(24 * 12, dtype=torch.float64).reshape(24, 12)  # [4 heads x 6, d 12]
    cut = narrow_to(w, (12, 9))
    rows = [h * 6 + j * 6 // 3 for h in range(4) for j in range(3)]  # h * a + floor(j * a / b): half of each head
    cols = [i * 12 // 9 for i in range(9)]
    assert rows == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22] and cols == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert torch.equal(cut, w[rows][:, cols])
    assert torch.equal(narrow_to(w, (24, 12)), w)
    heads = narrow_to(torch.arange(3 * 8), (3 * 6,))   # 3 heads of 8 -> 3 of 6: the same 6 of every head
    assert heads.reshape(3, 6).sub(torch.tensor([[0], [8], [16]])).eq(torch.tensor([0, 1, 2, 4, 5, 6])).all()


def _teacher(family: str, tok):
    """Teachers of 32 wide with 2+2 layers: BART, T5 from arch; mT5 (gated feed-forward, untied head, 3 heads
    of 8: the attention axis is not d_model) and Marian (sinusoidal positions) from their configs."""
    from transformers import AutoModelForSeq2SeqLM, MarianConfig, MT5Config
    if family in ("bart", "t5"):
        return scratch_model(ArchConfig(type=family, d_model=32, heads=4, d_ff=64, encoder_layers=2,
                                        decoder_layers=2), tok)
    if family == "mt5":
        config = MT5Config(vocab_size=len(tok), d_model=32, d_kv=8, num_heads=3, d_ff=64, num_layers=2,
                           num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    else:
        config = MarianConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                              decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, decoder_start_token_id=0)
    return AutoModelForSeq2SeqLM.from_config(config)


@pytest.mark.parametrize("family", ["bart", "t5", "mt5", "marian"])
def test_narrow_shrink_cuts_every_weight_with_one_index_per_width(family):
    from transformers import AutoModelForSeq2SeqLM
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=80))
    teacher = _teacher(family, tok)
    student = shrink_model(teacher, 1, 2, d_model=24, d_ff=40)
    c = student.config
    ff = (c.d_ff,) if family in ("t5", "mt5") else (c.encoder_ffn_dim, c.decoder_ffn_dim)
    assert c.d_model == 24 and set(ff) == {40}
    if family in ("t5", "mt5"):
        assert c.d_kv == teacher.config.d_kv * 24 // 32 and c.num_heads == teacher.config.num_heads
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for key, w in s_sd.items():  # layers 0 and 0, 1 of the teacher: the same keys
        if key.endswith("embed_positions.weight") and family == "marian":  # sinusoidal: the student's own table
            assert torch.equal(w, AutoModelForSeq2SeqLM.from_config(c).state_dict()[key]), key
            continue
        t = t_sd[key]
        for axis, (n_t, n_s) in enumerate(zip(t.shape, w.shape)):
            t = t.index_select(axis, torch.arange(n_s) * n_t // n_s)   # every cut axis, one rule
        assert torch.equal(w, t), key
    batch = tok(["hello world"], return_tensors="pt")
    assert torch.isfinite(student(**batch, labels=batch.input_ids).loss)
    assert shrink_model(teacher, 2, 2, d_model=32, d_ff=64).state_dict().keys() == t_sd.keys()


def test_narrow_shrink_refuses_a_wider_student_or_split_heads():
    from utils.errors import UserError
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=80))
    teacher = scratch_model(ArchConfig(d_model=32, heads=4, d_ff=64, encoder_layers=1, decoder_layers=1), tok)
    with pytest.raises(UserError, match=r"student.narrow.d_ff: 128 is wider than the teacher's 64"):
        shrink_model(teacher, 1, 1, d_ff=128)
    with pytest.raises(UserError, match=r"student.narrow.d_model: 18 does not give .* heads a whole width; use a "
                                        r"multiple of 4"):
        shrink_model(teacher, 1, 1, d_model=18)
    t5 = scratch_model(ArchConfig(type="t5", d_model=32, heads=4, d_ff=64, encoder_layers=1, decoder_layers=1), tok)
    with pytest.raises(UserError, match=r"18 does not give a whole d_kv \(the teacher's d_kv 8 scaled by 18/32\); "
                                        r"use a multiple of 4"):
        shrink_model(t5, 1, 1, d_model=18)


def test_full_pipeline_refuses_a_wider_student_before_training_the_teacher(tiny_config_dict, write_config, tmp_path):
    cfg = tiny_config_dict
    cfg["student"] = {"init": "shrink", "arch": {"encoder_layers": 1, "decoder_layers": 1}, "narrow": {"d_model": 64}}
    assert main(["--config", str(write_config(cfg)), "--output_dir", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run" / "teacher").exists() and not (tmp_path / "run" / "checkpoints" / "teacher").exists()


# --------------------------------------------------------------------------- in the pipeline
def test_pipeline_with_feature_and_attention_losses_and_a_shrunk_student(tiny_config_dict, write_config, tmp_path):
    """Projections train with the student and live in checkpoints, never in the exported student."""
    cfg = tiny_config_dict
    cfg["teacher"]["arch"].update(encoder_layers=2, decoder_layers=2)
    cfg["distill"]["losses"] = [{"name": "vanilla_kl", "weight": 0.5}, {"name": "hidden_mse", "weight": 1.0},
                                {"name": "attention_kl", "weight": 0.5, "maps": "cross"}]
    path = str(write_config(cfg))
    out = tmp_path / "run"
    assert main(["--config", path, "--output_dir", str(out)]) == 0
    ckpt = torch.load(sorted((out / "checkpoints/student").glob("step_*.pt"))[-1], weights_only=True)
    assert any(k.startswith("losses.1.projections.") for k in ckpt["weights"]["objective"])
    from safetensors.torch import load_file
    exported = load_file(out / "student/final/model.safetensors")
    assert not any("projection" in k for k in exported)
    first = json.loads((out / "student/metrics.jsonl").read_text().splitlines()[0])
    assert {"ce", "vanilla_kl", "hidden_mse", "attention_kl"} <= set(first)
    # shrink: the student is the teacher with fewer layers and a narrower d_model, initialised from it
    shrink = tmp_path / "shrink"
    assert main(["--mode", "distill_student", "--config", path, "--output_dir", str(shrink), "--teacher_path",
                 str(out / "teacher/final"), "--set", "student.init=shrink", "--set", "student.arch.encoder_layers=1",
                 "--set", "student.arch.decoder_layers=1", "--set", "student.narrow={d_model: 24}"]) == 0
    student_cfg = json.loads((shrink / "student/final/config.json").read_text())
    assert student_cfg["d_model"] == 24 and student_cfg["encoder_layers"] == 1 and student_cfg["encoder_ffn_dim"] == 64


def test_different_vocabularies_distill_across_tokenizers(tiny_config_dict, write_config, tmp_path):
    """Two trained tokenizers of different sizes: the teacher is aligned by characters (tests/test_cross_tokenizer.py)."""
    tiny_config_dict["student"]["tokenizer"] = {"train": {"vocab_size": 100}}
    path = str(write_config(tiny_config_dict))
    assert main(["--mode", "train_teacher", "--config", path, "--output_dir", str(tmp_path)]) == 0
    assert main(["--mode", "distill_student", "--config", path, "--output_dir", str(tmp_path)]) == 0
    first = json.loads((tmp_path / "student/metrics.jsonl").read_text().splitlines()[0])
    assert 0.3 < first["aligned_fraction"] <= 1.0 and first["vanilla_kl"] > 0


def test_every_registered_loss_is_trained_above():
    from distiller_zoo import LOSSES
    trained = {"hidden_mse", "hidden_cosine", "attention_kl", "attention_mse", "vanilla_kl", "reverse_kl", "jsd",
               "tvd", "skew_kl", "skew_reverse_kl",
               "uld"}   # tests/test_cross_tokenizer.py
    assert set(LOSSES) == trained
