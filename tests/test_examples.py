"""The example configs: they load from any directory, their paths agree, the detox recipe is the recipe."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from settings import load_config
from conftest import ROOT

EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_from_another_directory_and_finds_its_files(path, shared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on where the user stands
    cfg = load_config(path)
    for p in (cfg.data.train_file, cfg.teacher.tokenizer.path, cfg.student.tokenizer.path):
        if p:
            assert Path(p).exists(), f"{path.name}: {p} does not exist"
    # every mention of the shared folder (paths and comments alike) is written the same way
    for mention in re.findall(r"[./]*shared/", path.read_text()):
        assert mention == "../../../shared/", f"{path.name}: {mention!r}"


def test_paradetox_recipe_settings():
    cfg = load_config(ROOT / "configs" / "examples" / "paradetox_t5.yaml")
    assert cfg.data.prefix == "detoxify: " and cfg.data.max_source_length == cfg.data.max_target_length == 96
    assert cfg.distill.ce_weight == 1.0
    [kd] = cfg.distill.losses
    assert (kd.name, kd.weight, kd.params) == ("vanilla_kl", 0.7, {"temperature": 2.0})
    for role in ("teacher", "student"):
        o = getattr(cfg.training, role)
        assert (o.batch_size, o.gradient_accumulation_steps, o.learning_rate, o.epochs) == (4, 2, 2e-4, 3)
    assert cfg.training.precision == "fp16"
    assert "training.precision=fp32" in (ROOT / "configs/examples/paradetox_t5.yaml").read_text()  # the CPU note
    b = cfg.benchmark
    assert (b.num_beams, b.no_repeat_ngram_size, b.length_penalty) == (4, 3, 0.8)
    assert {"idiot", "stupid", "shut up"} <= set(b.bad_phrases)
    assert {"style_accuracy", "content_preservation", "fluency_perplexity"} <= set(b.metrics)


# --------------------------------------------------------------------------- every recipe runs, offline
# Each recipe exactly as shipped, with only what cannot run here swapped by --set: hub models by tiny
# models of the same family (random weights, the genuine tokenizers), hub datasets by the shared
# files, sizes and step counts by tiny ones, fp16 by fp32, and the metric models by tiny local ones.
TINY_STEPS = ["training.teacher.max_steps=2", "training.student.max_steps=2", "training.teacher.batch_size=2",
              "training.student.batch_size=2", "training.teacher.eval_generate_samples=2",
              "training.student.eval_generate_samples=2", "data.max_source_length=24", "data.max_target_length=12",
              "data.max_train_samples=12", "data.max_eval_samples=4", "benchmark.max_samples=4",
              "benchmark.max_new_tokens=8", "benchmark.bootstrap_samples=20", "benchmark.latency_samples=0",
              "benchmark.warmup_batches=0", "training.precision=fp32", "training.device=cpu",
              "training.teacher.random_copy_length=4"]
HUB_DATA = {"cnn_dailymail": "data/cnn_dailymail/train_sample_100.csv", "xsum": "data/xsum/test-tiny.jsonl"}
TINY_ARCH = ["{role}.arch.d_model=32", "{role}.arch.d_ff=64", "{role}.arch.heads=2", "{role}.arch.encoder_layers=1",
             "{role}.arch.decoder_layers=1"]
RECIPES = {  # file -> (teacher family, student family, the objective the run log must print)
    "news_summary_t5.yaml": ("t5", "t5", "loss = 1 * CE + 1 * VanillaKL(T=2)"),
    "cnn_dailymail_t5.yaml": ("t5", "t5", "loss = 0.5 * CE + 0.5 * VanillaKL(T=2)"),
    "cnn_dailymail_t5_feature.yaml": ("t5", "t5", "0.5 * VanillaKL(T=2) + 1 * HiddenMSE"),
    "cnn_dailymail_t5_attention.yaml": ("t5", "t5", "0.5 * VanillaKL(T=2) + 1 * AttentionKL"),
    "xsum_bart.yaml": ("bart", "bart", "loss = 0.3 * CE + 0.7 * VanillaKL(T=2)"),
    "paradetox_t5.yaml": ("t5", "t5", "loss = 1 * CE + 0.7 * VanillaKL(T=2)"),
    "paradetox_scratch.yaml": (None, None, "loss = 1 * CE"),  # with pseudo-labels: "pseudo-labels: training on"
}


CROSS_TOKENIZER = {"tinyllama_flan_t5_skew_kl.yaml"}  # run offline by tests/test_cross_tokenizer.py


def test_every_example_is_a_recipe_the_offline_run_covers():
    assert {p.name for p in EXAMPLES} == set(RECIPES) | CROSS_TOKENIZER


@pytest.fixture(scope="module")
def tiny_hub_models(tmp_path_factory):
    """Tiny stand-ins saved like hub checkpoints: T5 (teacher 2+2 layers, d 32, 4 heads; student 1+1, d 16,
    2 heads) with the genuine T5 SentencePiece tokenizer, BART alike with the genuine GPT-2 BPE (BART's)."""
    from conftest import SHARED
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); it holds the real tokenizers")
    import torch
    from transformers import (BartConfig, BartForConditionalGeneration, GPT2TokenizerFast, T5Config,
                              T5ForConditionalGeneration, T5TokenizerFast)
    t5_tok = T5TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "t5"))
    bart_tok = GPT2TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "gpt2"))
    bart_tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    out = {}
    for size, d, layers, heads in (("teacher", 32, 2, 4), ("student", 16, 1, 2)):
        torch.manual_seed(0)
        t5 = T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=d, d_kv=8, d_ff=2 * d, num_layers=layers,
                                                 num_heads=heads, decoder_start_token_id=0, pad_token_id=0,
                                                 eos_token_id=1))
        bart = BartForConditionalGeneration(BartConfig(
            vocab_size=len(bart_tok), d_model=d, encoder_layers=layers, decoder_layers=layers,
            encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * d,
            decoder_ffn_dim=2 * d, max_position_embeddings=64, pad_token_id=bart_tok.pad_token_id,
            bos_token_id=bart_tok.bos_token_id, eos_token_id=bart_tok.eos_token_id,
            decoder_start_token_id=bart_tok.eos_token_id, forced_eos_token_id=bart_tok.eos_token_id))
        for family, model, tok in (("t5", t5, t5_tok), ("bart", bart, bart_tok)):
            path = tmp_path_factory.mktemp(f"{family}_{size}")
            model.save_pretrained(path)
            tok.save_pretrained(path)
            out[family, size] = str(path)
    return out


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_offline_with_tiny_stand_ins(name, tiny_hub_models, tiny_bert, tiny_classifiers, tiny_gpt2,
                                                 shared, tmp_path):
    import json
    from main import main
    path = ROOT / "configs" / "examples" / name
    recipe = load_config(path)
    teacher_family, student_family, formula = RECIPES[name]
    sets = list(TINY_STEPS)
    if teacher_family:
        sets += [f"teacher.name_or_path={tiny_hub_models[teacher_family, 'teacher']}",
                 f"student.name_or_path={tiny_hub_models[student_family, 'student']}"]
    else:
        sets += [s.format(role=role) for role in ("teacher", "student") for s in TINY_ARCH]
        if recipe.student.narrow:   # narrower than the tiny teacher too
            sets += ["student.narrow={d_model: 16, d_ff: 32}"]
    if recipe.data.dataset_name:
        sets += ["data.dataset_name=null", "data.dataset_config=null",
                 f"data.train_file={shared / HUB_DATA[recipe.data.dataset_name]}"]
    sets += [f"benchmark.bertscore_model={tiny_bert}", "benchmark.bertscore_layers=2",
             f"benchmark.style_classifier={tiny_classifiers['random']}", f"benchmark.fluency_model={tiny_gpt2}"]
    out = tmp_path / "run"
    baseline = name == "xsum_bart.yaml"  # the CE-only student in one recipe: it costs a stage
    argv = ["--config", str(path), "--output_dir", str(out)] + ["--with_baseline"] * baseline
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    resolved = load_config(out / "config.resolved.json")
    # the recipe's objective and decoding ran as written
    assert resolved.distill == recipe.distill
    for key in ("num_beams", "no_repeat_ngram_size", "length_penalty", "bad_phrases", "metrics"):
        assert getattr(resolved.benchmark, key) == getattr(recipe.benchmark, key), key
    assert formula in (out / "logs" / "run.log").read_text()
    results = json.loads((out / "benchmark_results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert names[:2 + baseline] == ["teacher", "student", "student_ce"][:2 + baseline]
    assert ("student_ce" in names) == baseline
    scored = set(results["models"][1]["metrics"])
    for metric in recipe.benchmark.metrics:  # every metric the recipe asks for is computed
        assert {"rouge": "rougeL", "bertscore": "bertscore_f1", "style_accuracy": "style_accuracy",
                "content_preservation": "content_preservation", "fluency_perplexity": "fluency_perplexity",
                "bleu": "bleu4"}.get(metric, metric) in scored, metric
    assert results["comparison"]["student vs teacher"]["retention_pct"]
    assert bool(results["verdict"]["distillation"]) == baseline
