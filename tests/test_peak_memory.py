"""Each benchmarked model is measured in a process of its own: its peak memory is its own."""
from __future__ import annotations

import torch

from benchmark.measure import measure_in_child
from settings import ArchConfig, BenchmarkConfig, TokenizerTrainConfig
from demo_data import generate
from generation import generate_texts, generation_config
from models import export, scratch_model, train_tokenizer
from utils.runtime import resolve_precision


def test_peak_memory_is_each_models_own_and_predictions_match(tmp_path):
    rows = generate("polite_rewrite", 80, 0)
    tok = train_tokenizer([t for r in rows for t in (r["source"], r["target"])], TokenizerTrainConfig(vocab_size=128))
    sources = [r["source"] for r in rows[:4]]
    cpu = torch.device("cpu")
    precision = resolve_precision("fp32", cpu)
    archs = {"big": ArchConfig(type="bart", d_model=256, encoder_layers=1, decoder_layers=1, heads=4, d_ff=8192,
                               max_positions=64),
             "small": ArchConfig(type="bart", d_model=32, encoder_layers=1, decoder_layers=1, heads=2, d_ff=64,
                                 max_positions=64)}
    measured, weights_mb = {}, {}
    for name, arch in archs.items():
        torch.manual_seed(0)
        model = scratch_model(arch, tok).eval()
        weights_mb[name] = sum(p.numel() * 4 for p in model.parameters()) / 2**20
        export(model, tok, tmp_path / name)
        gen = dict(prefix="", max_source_length=48, batch_size=4,
                   gen_config=generation_config(BenchmarkConfig(max_new_tokens=6), model, tok))
        preds, numbers = measure_in_child(tmp_path / name, sources, gen, cpu, precision, 0, 2)
        assert preds == generate_texts(model, tok, sources, **gen, device=cpu, precision=precision)[0]
        assert numbers["samples_per_s"] > 0 and numbers["latency_samples"] == 2
        measured[name] = numbers["peak_memory_mb"]
    assert weights_mb["big"] > 30 and weights_mb["small"] < 1
    # the big model's figure holds its weights; the small one's does not include them (nor the interpreter's)
    assert measured["big"] >= 0.9 * weights_mb["big"]
    assert measured["big"] - measured["small"] >= 0.8 * (weights_mb["big"] - weights_mb["small"])
