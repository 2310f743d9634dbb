"""Peak memory per model: each model in its own process (what the benchmark reports now) against
the old figure, the whole process's peak resident set while the model generates with every model
loaded. Prints both side by side for a teacher and a student ~8x smaller, and their ratios.

    python bench/peak_memory.py            # BART-style models from scratch, CPU, a few minutes
"""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.measure import _rss_bytes, measure_in_child  # noqa: E402
from settings import ArchConfig, BenchmarkConfig, TokenizerTrainConfig  # noqa: E402
from demo_data import generate  # noqa: E402
from generation import generate_texts, generation_config  # noqa: E402
from models import export, scratch_model, train_tokenizer  # noqa: E402
from utils.runtime import resolve_precision

ARCHS = {"teacher": ArchConfig(type="bart", d_model=512, encoder_layers=4, decoder_layers=4, heads=8, d_ff=2048,
                               max_positions=64),
         "student": ArchConfig(type="bart", d_model=256, encoder_layers=2, decoder_layers=2, heads=4, d_ff=1024,
                               max_positions=64)}


def old_in_process_peak(model, tok, sources, gen) -> float:
    """The previous figure: this process's RSS sampled every 5 ms while the model generates."""
    peak, stop = [_rss_bytes("VmRSS")], threading.Event()

    def sample():
        while not stop.wait(0.005):
            peak.append(_rss_bytes("VmRSS"))
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    generate_texts(model, tok, sources, **gen)
    stop.set()
    t.join()
    return max(peak) / 2**20


def main():
    rows = generate("polite_rewrite", 600, 0)
    tok = train_tokenizer([t for r in rows for t in (r["source"], r["target"])], TokenizerTrainConfig(vocab_size=8000))
    sources = [r["source"] for r in rows[:64]]
    cfg = BenchmarkConfig(num_beams=4, max_new_tokens=16, batch_size=32)
    device, precision = torch.device("cpu"), resolve_precision("fp32", torch.device("cpu"))
    tmp = Path(tempfile.mkdtemp())
    models = {}
    for name, arch in ARCHS.items():
        torch.manual_seed(0)
        models[name] = scratch_model(arch, tok).eval()
        export(models[name], tok, tmp / name)
    out = {}
    for name, model in models.items():  # every model loaded, as in one benchmark run
        gen = dict(prefix="", max_source_length=48, gen_config=generation_config(cfg, model, tok), batch_size=32)
        params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        old = old_in_process_peak(model, tok, sources, dict(gen, device=device, precision=precision))
        t0 = time.perf_counter()
        _, measured = measure_in_child(tmp / name, sources, gen, device, precision, 0, 0)
        out[name] = (params_mb, old, measured["peak_memory_mb"], time.perf_counter() - t0)
    print(f"{'model':<8} {'weights MB':>10} {'old: process RSS MB':>20} {'new: own process MB':>20}")
    for name, (w, old, new, _) in out.items():
        print(f"{name:<8} {w:>10.1f} {old:>20.1f} {new:>20.1f}")
    (tw, to, tn, _), (sw, so, sn, _) = out["teacher"], out["student"]
    print(f"teacher / student ratio: weights {tw / sw:.2f}x, old figure {to / so:.2f}x, new figure {tn / sn:.2f}x")


if __name__ == "__main__":
    main()
