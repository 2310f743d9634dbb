"""Teachers with another tokenizer (issue 12): alignment, vocabulary map, aligned losses, causal
teachers, runs (loss falls, exact resume, the TinyLlama -> FLAN-T5 recipe with tiny stand-ins)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED
from distiller_zoo import LOSSES, LogitLoss, build_loss
from distiller_zoo.alignment import align, token_starts
from distiller_zoo.cross_teacher import AlignedChunk, AlignedTargets
from distiller_zoo.fused import fused_logit_objective
from distiller_zoo.heads import LMHead
from distiller_zoo.vocab_map import VocabMap, build_vocab_map, token_texts, vocab_map
from main import main

PARADETOX = SHARED / "data" / "paradetox" / "paradetox.tsv"


# --------------------------------------------------------------------------- tokenizers and tiny models
@pytest.fixture(scope="module")
def toks():
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); it holds the GPT-2 and T5 tokenizers")
    from transformers import GPT2TokenizerFast, T5TokenizerFast
    gpt2 = GPT2TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "gpt2"))
    gpt2.pad_token = gpt2.eos_token
    return gpt2, T5TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "t5"))


@pytest.fixture(scope="module")
def models(toks, tmp_path_factory):
    """Saved tiny models: a Llama and a GPT-2 (GPT-2 tokenizer), a BART (GPT-2 tokenizer), a T5 (T5 tokenizer)."""
    from transformers import (BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, T5Config, T5ForConditionalGeneration)
    gpt2, t5 = toks
    root, eos = tmp_path_factory.mktemp("cross_models"), gpt2.eos_token_id
    torch.manual_seed(0)
    built = {
        "llama": (LlamaForCausalLM(LlamaConfig(vocab_size=len(gpt2), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                               max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos)), gpt2),
        "gpt2": (GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt2), n_embd=32, n_layer=1, n_head=2, n_positions=256,
                                            bos_token_id=eos, eos_token_id=eos)), gpt2),
        "bart": (BartForConditionalGeneration(BartConfig(
            vocab_size=len(gpt2), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
            pad_token_id=eos, bos_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos)), gpt2),
        "t5": (T5ForConditionalGeneration(T5Config(vocab_size=len(t5), d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                                   num_decoder_layers=1, num_heads=2, decoder_start_token_id=0,
                                                   pad_token_id=0, eos_token_id=1)), t5),
    }
    for name, (model, tok) in built.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return {name: root / name for name in built} | {"objects": built}


def collator(toks, causal=True, template="{prefix}{source}\n"):
    from data_loader.batching import Seq2SeqCollator
    from data_loader.cross import CrossTokenizerCollator
    gpt2, t5 = toks
    return CrossTokenizerCollator(Seq2SeqCollator(t5, "", 64, 64), gpt2, causal, template)


# --------------------------------------------------------------------------- alignment
def aligned_pairs(toks, target: str):
    """(student token, teacher token it is aligned with or None) for a causal GPT-2 teacher."""
    gpt2, t5 = toks
    c = collator(toks)
    inputs, _, index = c.teacher_row(("src", target))
    s = t5.convert_ids_to_tokens(c.encode([("src", target)])[0][1].tolist())
    t = gpt2.convert_ids_to_tokens(inputs.tolist())
    return [(s[j], t[i + 1] if i >= 0 else None) for j, i in enumerate(index.tolist())]


@pytest.mark.parametrize("target, expected", [
    ("Hello, world!", [("▁Hello", "ĠHello"), (",", ","), ("▁world", "Ġworld"), ("!", "!"),
                       ("</s>", "<|endoftext|>")]),
    # numbers: T5's "▁3." covers GPT-2's "Ġ3" and "." (first piece); both then have "14"
    ("pi is 3.14", [("▁pi", "Ġpi"), ("▁is", "Ġis"), ("▁3.", "Ġ3"), ("14", "14"), ("</s>", "<|endoftext|>")]),
    # accents: "▁café" spans GPT-2's "Ġcaf" + "Ã©s": aligned with the first; its "s" starts mid-token
    ("cafés", [("▁café", "Ġcaf"), ("s", None), ("</s>", "<|endoftext|>")]),
    # whitespace runs and a tab: lone "▁" pieces start nothing; "b" and "c" align across the runs
    ("a  b\tc", [("▁", None), ("a", "Ġa"), ("▁", None), ("b", "Ġb"), ("▁", None), ("c", "c"),
                 ("</s>", "<|endoftext|>")]),
    # emoji: T5 has no piece for it (<unk>), GPT-2 splits its bytes; the first byte piece counts
    ("ok 😀 x", [("▁", None), ("ok", "Ġok"), ("▁", None), ("<unk>", "ĠðŁĺ"), ("▁", None), ("x", "Ġx"),
                 ("</s>", "<|endoftext|>")]),
    # several student tokens inside one teacher token ("ĠnaÃ¯ve" is "naïve"): only the first gets a signal
    ("naïve", [("▁", None), ("n", "ĠnaÃ¯ve"), ("a", None), ("<unk>", None), ("ve", None),
               ("</s>", "<|endoftext|>")]),
])
def test_alignment_of_hand_written_targets(toks, target, expected):
    assert aligned_pairs(toks, target) == expected


def test_alignment_rules_without_tokenizers():
    text = "ab cd"
    blank = {i: i == 9 for i in range(10)}
    # student: "ab" | " cd" | eos(7) ; teacher: "a" | "b" | " " (blank, 9) | "cd" | eos(7)
    s = token_starts([1, 2, 7], text, [(0, 2), (2, 5)], [1, 2], blank, eos_id=7)
    t = token_starts([3, 4, 9, 5, 7], text, [(0, 1), (1, 2), (2, 3), (3, 5)], [3, 4, 9, 5], blank, eos_id=7)
    assert s == [0, 3, 5] and t == [0, 1, None, 3, 5]
    assert align(s, t) == [0, 3, 4]
    # two student tokens with one start (byte pieces of a character): only the first is aligned
    assert align([0, 0, 2], [0, 2]) == [0, None, 1]
    # a leading-space shift moves offsets back; a token that is not in the plain ids (a bos) starts nothing
    assert token_starts([8, 1], "ab", [(0, 3)], [1], blank, eos_id=7, shift=1) == [None, 0]


def test_padded_causal_batch_equals_each_row_alone(toks, models):
    from distiller_zoo.cross_teacher import AlignedTeacher
    gpt2, t5 = toks
    model = models["objects"]["gpt2"][0]
    teacher = AlignedTeacher(model, vocab_map(gpt2, t5), len(gpt2), causal=True)
    c = collator(toks)
    pairs = [("a short one", "Fine."), ("a much longer source sentence here", "That is a longer, polite target.")]
    both = teacher.targets(c(pairs))
    alone = [teacher.targets(c([p])) for p in pairs]
    assert both.n == sum(a.n for a in alone) and both.aligned == sum(a.aligned for a in alone) > 0
    torch.testing.assert_close(both.chunk(0, both.n).logits,
                               torch.cat([a.chunk(0, a.n).logits for a in alone]), atol=1e-5, rtol=1e-5)
    # the logits are the model's own at the position before each aligned teacher token
    batch = c(pairs[1:])
    with torch.no_grad():
        full = model(input_ids=batch["teacher_input_ids"]).logits[0]
    index = batch["teacher_index"][0]
    torch.testing.assert_close(alone[1].chunk(0, alone[1].n).logits, full[index[index >= 0]], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- vocabulary map
def test_vocabulary_overlap_is_stable_and_plausible(toks):
    gpt2, t5 = toks
    m = vocab_map(gpt2, t5)
    assert vocab_map(gpt2, t5) is m                                         # once per tokenizer pair
    assert (len(m.student_ids), len(m.teacher_ids)) == (18_867, 18_867)     # measured; README quotes it
    pairs = dict(zip(m.teacher_ids.tolist(), m.student_ids[m.columns].tolist()))
    ids = lambda tok, piece: tok.convert_tokens_to_ids(piece)  # noqa: E731
    assert pairs[ids(gpt2, "Ġhello")] == ids(t5, "▁hello")                 # word starts: Ġ and ▁
    assert pairs[ids(gpt2, "ing")] == ids(t5, "ing")                       # word pieces
    assert pairs[ids(gpt2, "Ã©")] == ids(t5, "é")                          # byte-level text decoded
    assert pairs[gpt2.eos_token_id] == t5.eos_token_id
    assert ids(gpt2, "Ã") not in pairs                                     # a lone UTF-8 lead byte: no counterpart
    assert token_texts(gpt2)[ids(gpt2, "Ã")] == b"\xc3"


def test_byte_fallback_and_case_folding():
    from tokenizers import Tokenizer, models as tm, normalizers
    from transformers import PreTrainedTokenizerFast

    def wordlevel(vocab, lower=False):
        tok = Tokenizer(tm.WordLevel(vocab, unk_token="<unk>"))
        if lower:
            tok.normalizer = normalizers.Lowercase()
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")

    teacher = wordlevel({"<unk>": 0, "</s>": 1, "<0xC3>": 2, "<0x0A>": 3, "▁Hello": 4, "▁hello": 5, "Ãİ": 6})
    assert token_texts(teacher)[2:6] == [b"\xc3", "\n", " Hello", " hello"]
    cased = wordlevel({"<unk>": 0, "</s>": 1, "\n": 2, "▁hello": 3, "▁Hello": 4})
    m = build_vocab_map(teacher, cased)
    assert dict(zip(m.teacher_ids.tolist(), m.student_ids[m.columns].tolist())) == {3: 2, 4: 4, 5: 3, 1: 1}
    uncased = wordlevel({"<unk>": 0, "</s>": 1, "▁hello": 2}, lower=True)
    m = build_vocab_map(teacher, uncased)   # "Hello" and "hello" both land on "hello": their mass adds up
    assert dict(zip(m.teacher_ids.tolist(), m.student_ids[m.columns].tolist())) == {4: 2, 5: 2, 1: 1}
    assert len(m.student_ids) == 2


# --------------------------------------------------------------------------- losses against float64
def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(a, b):
    return float(sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0))


def reference_loss(name: str, p, q, T, p_full=None, q_full=None, alpha=0.1, beta=0.5):
    """One position's loss from the papers' formulas, float64 (p teacher, q student)."""
    if name == "vanilla_kl":
        return T * T * _kl(p, q)
    if name == "reverse_kl":
        return T * T * _kl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return T * T * (beta * _kl(p, m) + (1 - beta) * _kl(q, m))
    if name == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    if name == "skew_kl":
        return T * T * _kl(p, alpha * p + (1 - alpha) * q)
    if name == "skew_reverse_kl":
        return T * T * _kl(q, alpha * q + (1 - alpha) * p)
    if name == "uld":
        a, b = np.sort(p_full)[::-1], np.sort(q_full)[::-1]
        w = max(len(a), len(b))
        return float(np.abs(np.pad(a, (0, w - len(a))) - np.pad(b, (0, w - len(b)))).sum())
    raise KeyError(name)


LOGIT_LOSSES = sorted(n for n, c in LOSSES.items() if issubclass(c, LogitLoss))


def test_every_logit_loss_is_checked():
    assert set(LOGIT_LOSSES) == {"vanilla_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl", "uld"}


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_aligned_loss_matches_float64_formula(name):
    g = torch.Generator().manual_seed(3)
    vt, vs, n, T = 40, 30, 6, 2.0
    teacher_ids = torch.tensor([1, 4, 5, 7, 9, 11, 12, 20, 21, 33, 39])
    student_of = torch.tensor([0, 2, 2, 3, 8, 9, 10, 15, 15, 29, 4])      # 4 and 5, 20 and 21 share a student id
    student_ids = student_of.unique()
    vmap = VocabMap(teacher_ids, torch.searchsorted(student_ids, student_of), student_ids, vt, vs)
    rows = torch.tensor([0, 2, 3, 5])
    z_t = torch.randn(len(rows), vt, generator=g) * 3
    z_s = torch.randn(n, vs, generator=g) * 3
    loss = build_loss(name, {"temperature": T})
    got = loss.chunk_losses(z_s, AlignedChunk(z_t, rows, n, vmap))
    assert got.shape == (n,) and got[[1, 4]].abs().max() == 0             # no signal, no KD
    for k, r in enumerate(rows.tolist()):
        zt, zs = z_t[k].double().numpy() / T, z_s[r].double().numpy() / T
        mapped = _softmax(zt[teacher_ids.numpy()])                       # restricted to the mapped ids, renormalised
        p = np.zeros(len(student_ids))
        for pr, s in zip(mapped, student_of.tolist()):
            p[student_ids.tolist().index(s)] += pr                       # shared student ids add up
        q = _softmax(zs[student_ids.numpy()])
        want = reference_loss(name, p, q, T, p_full=_softmax(zt), q_full=_softmax(zs))
        assert math.isclose(float(got[r]), want, rel_tol=2e-5, abs_tol=1e-6), (name, r, float(got[r]), want)


def test_chunked_objective_with_aligned_teacher_equals_unchunked():
    """The seam: the fused chunked objective takes aligned chunks exactly as the plain path does."""
    g = torch.Generator().manual_seed(0)
    n, d, vs, vt = 9, 8, 30, 40
    teacher_ids = torch.arange(0, 40, 2)
    student_of = torch.arange(20) % 15
    student_ids = student_of.unique()
    vmap = VocabMap(teacher_ids, torch.searchsorted(student_ids, student_of), student_ids, vt, vs)
    rows = torch.tensor([0, 1, 4, 5, 8])
    targets = AlignedTargets(torch.randn(len(rows), d, generator=g), rows, n,
                             LMHead(torch.randn(vt, d, generator=g), None), vmap)
    head = LMHead(torch.randn(vs, d, generator=g, requires_grad=True), None)
    labels = torch.randint(0, vs, (n,), generator=g)
    losses = [build_loss("skew_kl"), build_loss("uld")]
    out = []
    for chunk in (0, 2):
        h = torch.randn(n, d, generator=torch.Generator().manual_seed(1), requires_grad=True)
        total, sums = fused_logit_objective(h, head, labels, targets, 0.5, losses, [0.5, 0.3], chunk)
        grad_h, grad_w = torch.autograd.grad(total, (h, head.weight))
        out.append((total.detach(), sums, grad_h, grad_w))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- runs
def run_config(models, teacher="llama", **student_optim):
    if not PARADETOX.is_file():
        pytest.skip(f"{PARADETOX} is absent")
    optim = {"max_steps": 6, "batch_size": 4, "eval_batch_size": 8, "learning_rate": 3e-3, "eval_every": 3,
             "log_every": 1, "warmup_ratio": 0.0, "gradient_accumulation_steps": 2, "save_total_limit": 5}
    return {
        "teacher": {"init": "pretrained", "name_or_path": str(models[teacher])},
        "student": {"init": "pretrained", "name_or_path": str(models["t5"])},
        "data": {"train_file": str(PARADETOX), "source_column": "toxic", "target_column": "neutral1",
                 "prefix": "detoxify: ", "max_train_samples": 16, "max_eval_samples": 4, "max_source_length": 48,
                 "max_target_length": 48},
        "training": {"precision": "fp32", "device": "cpu", "train_teacher": False,
                     "student": dict(optim, **student_optim)},
        "distill": {"ce_weight": 0.5, "chunk_size": 16,
                    "losses": [{"name": "skew_kl", "weight": 0.5}, {"name": "uld", "weight": 0.2}]},
        "benchmark": {"batch_size": 8, "max_new_tokens": 8, "warmup_batches": 0, "latency_samples": 0,
                      "metrics": ["bleu", "rouge"], "bootstrap_samples": 0},
    }


def records(path):
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("teacher", ["gpt2", "bart"])
def test_short_distillation_from_another_tokenizer_lowers_the_loss(models, write_config, tmp_path, teacher):
    """A causal GPT-2 teacher and a seq2seq BART teacher (both GPT-2 tokenizer) into a T5 student."""
    cfg = run_config(models, teacher, max_steps=10, gradient_accumulation_steps=1, eval_every=10,
                     learning_rate=1e-2)
    cfg["data"]["max_train_samples"] = 8
    assert main(["--mode", "distill_student", "--config", str(write_config(cfg)), "--output_dir",
                 str(tmp_path)]) == 0
    recs = records(tmp_path / "student" / "metrics.jsonl")
    assert len(recs) == 10 and {"ce", "skew_kl", "uld", "aligned_fraction"} <= set(recs[0])
    assert all(0.5 < r["aligned_fraction"] < 1.0 for r in recs)
    first, last = np.mean([r["loss"] for r in recs[:3]]), np.mean([r["loss"] for r in recs[-3:]])
    assert last < first - 0.2, (first, last)
    said = (tmp_path / "logs" / "run.log").read_text()
    assert "receive a teacher signal" in said and "18,867 of 32,100 student tokens" in said


def test_resume_with_a_causal_teacher_is_bit_identical(models, write_config, tmp_path):
    cfg = str(write_config(run_config(models)))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["--mode", "distill_student", "--config", cfg, "--output_dir", str(straight)]) == 0
    ckpt3 = straight / "checkpoints" / "student" / "step_00000003.pt"
    (resumed / "checkpoints" / "student").mkdir(parents=True)
    shutil.copy(ckpt3, resumed / "checkpoints" / "student" / ckpt3.name)
    assert main(["--mode", "distill_student", "--config", cfg, "--output_dir", str(resumed),
                 "--resume_from_checkpoint", "auto"]) == 0
    from checkpoints import load_checkpoint_file
    a = load_checkpoint_file(straight / "checkpoints" / "student" / "step_00000006.pt")["weights"]["model"]
    b = load_checkpoint_file(resumed / "checkpoints" / "student" / "step_00000006.pt")["weights"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = {r["step"]: r for r in records(straight / "student" / "metrics.jsonl")}
    rest = {r["step"]: r for r in records(resumed / "student" / "metrics.jsonl")}
    assert sorted(rest) == [4, 5, 6]
    assert all(rest[s]["loss"] == full[s]["loss"] and rest[s]["skew_kl"] == full[s]["skew_kl"] for s in rest)


def test_tinyllama_flan_t5_recipe_runs_with_tiny_stand_ins(models, tmp_path, monkeypatch):
    from settings import load_config
    recipe = ROOT / "configs" / "examples" / "tinyllama_flan_t5_skew_kl.yaml"
    cfg = load_config(recipe)
    assert (cfg.teacher.name_or_path, cfg.teacher.kind, cfg.student.name_or_path) == \
        ("TinyLlama/TinyLlama_v1.1", "causal", "google/flan-t5-base")
    assert [s.name for s in cfg.distill.losses] == ["skew_kl"] and {"bleu", "rouge"} <= set(cfg.benchmark.metrics)
    assert cfg.training.train_teacher is False
    monkeypatch.chdir(tmp_path)
    sets = [f"teacher.name_or_path={models['llama']}", f"student.name_or_path={models['t5']}",
            "training.precision=fp32", "training.device=cpu", "data.max_train_samples=16", "data.max_eval_samples=4",
            "training.student.max_steps=2", "training.student.batch_size=4", "training.student.eval_every=2",
            "training.student.eval_generate_samples=4", "benchmark.max_new_tokens=6", "benchmark.num_beams=1",
            "benchmark.latency_samples=0", "benchmark.warmup_batches=0"]
    argv = ["--mode", "full_pipeline", "--config", str(recipe), "--output_dir", str(tmp_path / "run")]
    assert main(argv + [x for s in sets for x in ("--set", s)]) == 0
    results = json.loads((tmp_path / "run" / "benchmark_results.json").read_text())
    assert "student" in json.dumps(results) and (tmp_path / "run" / "student" / "final" / "model.safetensors").is_file()
    assert "aligned_fraction" in records(tmp_path / "run" / "student" / "metrics.jsonl")[0]


def test_refusals_name_the_fix(models, write_config, tmp_path, capsys):
    cfg = run_config(models)
    cfg["distill"]["losses"] = [{"name": "hidden_mse", "weight": 1.0}]
    assert main(["--mode", "distill_student", "--config", str(write_config(cfg)), "--output_dir",
                 str(tmp_path / "a")]) == 2
    assert "hidden-state/attention losses" in capsys.readouterr().err
    cfg = run_config(models)
    assert main(["--mode", "train_teacher", "--config", str(write_config(cfg, "b.json")), "--output_dir",
                 str(tmp_path / "b")]) == 2
    assert "skip train_teacher" in capsys.readouterr().err


@pytest.mark.parametrize("template, said", [("{prefix}{text}\n", "is not a template of {prefix} and {source}"),
                                            ("Rewrite politely:\n", "has no {source}")])
def test_a_bad_prompt_template_is_one_line(write_config, tmp_path, capsys, template, said):
    from conftest import TINY_CONFIG
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["teacher"]["prompt_template"] = template
    assert main(["--mode", "distill_student", "--config", str(write_config(cfg)), "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher.prompt_template" in err[0] and said in err[0]
