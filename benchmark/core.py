"""Evaluate every model the same way and compare them."""
from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from benchmark.measure import count_parameters, disk_mb, environment, measure_in_child
from benchmark.plots import write_plots
from benchmark.quality import LOWER_IS_BETTER, intervals, paired, score
from benchmark.report import write_reports
from benchmark.baselines import delete_words, learn_toxic_words
from benchmark.verdict import diversity, verdict
from generation import generation_config
from metrics import sacrebleu_signatures
from utils import distributed as dist
from utils.errors import UserError
from utils.logs import log

# floors, not candidates: left out of comparisons
REFERENCE_ROWS = ("copy_source", "delete_toxic_words", "untrained_student")


@dataclass
class BenchModel:
    name: str                      # "teacher", "student", an extra model's name, or a reference row
    model: torch.nn.Module | None  # None for a rule (copy_source, delete_toxic_words)
    tokenizer: object
    path: Path | None = None
    rule: Callable[[str], str] | None = None  # a trivial system's output for a source


def run_benchmark(models: list[BenchModel], run) -> dict:
    """Evaluate ``models`` on the configured split and write the reports into run.output_dir."""
    cfg = run.cfg.benchmark
    examples = benchmark_examples(run)
    models = models + reference_rows(models, cfg.baselines, run)
    log.info("benchmark: %d %s examples, models %s", len(examples), cfg.split, ", ".join(m.name for m in models))
    evaluated = [evaluate_model(m, examples, run) for m in models]
    if not dist.is_main():  # under torchrun the other ranks only decoded their shards; rank 0 scores and reports
        return {}
    records = [e.record for e in evaluated]
    results = {
        "split": cfg.split,
        "num_examples": len(examples),
        "decoding": decoding_settings(cfg),
        "confidence": cfg.confidence,
        "bootstrap_samples": cfg.bootstrap_samples,
        "sacrebleu_signatures": sacrebleu_signatures(),
        "environment": environment(run.device, run.precision),
        "models": records,
        "references_distinct_fraction": diversity([e.references[0] for e in examples])["distinct_fraction"],
        "comparison": compare(records, {e.record["name"]: e for e in evaluated}, examples, cfg),
        "notes": list(dict.fromkeys(n for e in evaluated for n in e.notes)),
    }
    results["verdict"] = verdict(results, LOWER_IS_BETTER)
    run_dirs = {role: run.output_dir / role for role in ("teacher", "student")}
    results["plots"] = write_plots(results, run.output_dir, run_dirs)
    write_reports(results, run.output_dir)
    return results


def benchmark_examples(run):
    cfg = run.cfg.benchmark
    examples = getattr(run.splits, cfg.split)
    if cfg.max_samples:
        examples = examples[:cfg.max_samples]
    if not examples:
        raise UserError(f"benchmark.split {cfg.split!r} is empty; choose another split or adjust data.split_ratios")
    return examples


def reference_rows(models: list[BenchModel], names: list[str], run) -> list[BenchModel]:
    """Rows that show whether the trained models learned anything (the input copied; a learned
    deletion list applied; random weights)."""
    out = []
    ref = next((m for m in models if m.name == "student"), None)  # the architecture of the random row
    for name in names:
        if name == "copy_source":
            out.append(BenchModel("copy_source", None, None, rule=lambda s: s))
        elif name == "delete_toxic_words":
            words = learn_toxic_words(run.splits.train)
            log.info("benchmark: delete_toxic_words learned %d words from the training split (e.g. %s)",
                     len(words), ", ".join(sorted(words)[:8]))
            out.append(BenchModel(name, None, None, rule=lambda s, w=frozenset(words): delete_words(s, w)))
        elif name == "untrained_student" and ref is not None:
            from transformers import AutoModelForSeq2SeqLM
            torch.manual_seed(0)
            out.append(BenchModel("untrained_student", AutoModelForSeq2SeqLM.from_config(ref.model.config),
                                  ref.tokenizer))
    return out


class Evaluated(NamedTuple):
    record: dict          # what the reports show
    preds: list[str]
    per_example: dict     # per-example scores of model-based metrics (for the bootstrap)
    notes: list[str]      # e.g. a metric skipped because its model is unavailable


def evaluate_model(bm: BenchModel, examples, run) -> Evaluated:
    """Quality (with intervals), speed, memory and size of one model (None on ranks other than 0)."""
    cfg = run.cfg.benchmark
    sources = [e.source for e in examples]
    record = {"name": bm.name, "path": str(bm.path) if bm.path else None}
    if bm.model is None:
        preds = [bm.rule(s) for s in sources]
    else:
        preds = _measure(bm, sources, run, record)
    if not dist.is_main():
        return None
    record.update(diversity(preds))
    record["metrics"], per_example, notes = score(cfg, examples, preds, run.device)
    record["ci"] = intervals(cfg, examples, preds, per_example)
    _write_predictions(run.output_dir / f"predictions_{bm.name}.jsonl", examples, preds)
    log.info("benchmark %s: %s", bm.name, " ".join(f"{k} {v:.2f}" for k, v in record["metrics"].items()))
    return Evaluated(record, preds, per_example, notes)


def _measure(bm: BenchModel, sources, run, record: dict) -> list[str]:
    """Size here; speed, memory and the predictions in a process of the model's own."""
    cfg, data = run.cfg.benchmark, run.cfg.data
    gen_config = generation_config(cfg, bm.model, bm.tokenizer)
    record["generation_config"] = gen_config.to_diff_dict()
    gen = dict(prefix=data.prefix, max_source_length=data.max_source_length, gen_config=gen_config,
               batch_size=cfg.batch_size)
    with _saved(bm, run.output_dir) as directory:  # under torchrun: each rank decodes its shard, rank 0 gathers them
        preds, measured = measure_in_child(directory, dist.shard(sources), gen, run.device, run.precision,
                                           cfg.warmup_batches, cfg.latency_samples)
    if dist.world_size() > 1:
        gathered = dist.all_gather((preds, measured))
        preds = [p for part, _ in gathered for p in part]
        measured = sharded_speed([m for _, m in gathered], len(sources))
    total, trainable = count_parameters(bm.model)
    record.update(params_total=total, params_trainable=trainable, size_on_disk_mb=disk_mb(bm.model, bm.path),
                  **measured)
    return preds


def sharded_speed(parts: list[dict], n_sources: int) -> dict:
    """Throughput of the ranks together (all sources over the slowest rank's time), the highest peak
    memory of one rank; the latencies are rank 0's (each rank times its own samples alike)."""
    seconds = max(p["generation_s"] for p in parts)
    tokens = sum(p["tokens_per_s"] * p["generation_s"] for p in parts)
    out = dict(parts[0], generation_s=seconds, samples_per_s=round(n_sources / seconds, 3),
               tokens_per_s=round(tokens / seconds, 1), peak_memory_mb=max(p["peak_memory_mb"] for p in parts),
               ranks=len(parts))
    return out


@contextmanager
def _saved(bm: BenchModel, output_dir: Path):
    """The model's directory, or a temporary copy for a model that has none (hub, random weights)."""
    if bm.path is not None and (Path(bm.path) / "config.json").is_file():
        yield Path(bm.path)
        return
    if dist.world_size() > 1:  # under torch.distributed transformers saves on rank 0 only: share its copy
        directory = Path(output_dir) / f".{bm.name}.model.tmp"
        if dist.is_main():
            bm.model.save_pretrained(directory, safe_serialization=True)
            bm.tokenizer.save_pretrained(directory)
        dist.barrier()
        try:
            yield directory
        finally:
            dist.barrier()
            if dist.is_main():
                shutil.rmtree(directory, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bm.model.save_pretrained(tmp, safe_serialization=True)
        bm.tokenizer.save_pretrained(tmp)
        yield Path(tmp)


def _write_predictions(path: Path, examples, preds) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e, p in zip(examples, preds):
            f.write(json.dumps({"source": e.source, "references": e.references, "prediction": p},
                               ensure_ascii=False) + "\n")


def decoding_settings(cfg) -> dict:
    return {k: getattr(cfg, k) for k in ("num_beams", "max_new_tokens", "no_repeat_ngram_size", "length_penalty",
                                          "bad_phrases", "batch_size")}


# --------------------------------------------------------------------------- comparison
def comparison_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(model, reference) pairs: every candidate against the teacher, the student against the others."""
    candidates = [n for n in names if n not in REFERENCE_ROWS]
    pairs = [(n, "teacher") for n in candidates if n != "teacher" and "teacher" in candidates]
    if "student" in candidates:
        pairs += [("student", n) for n in candidates if n not in ("student", "teacher")]
    return pairs


def compare(records: list[dict], evaluated: dict | None = None, examples=None, cfg=None) -> dict:
    """Per pair: compression ratio, size ratio, speedup, retention % for every metric and, given the
    predictions, the paired bootstrap difference of every metric."""
    by_name = {r["name"]: r for r in records}
    out = {}
    for m, ref in comparison_pairs(list(by_name)):
        a, b = by_name[m], by_name[ref]
        out[f"{m} vs {ref}"] = {
            "model": m, "reference": ref,
            "compression_ratio": _ratio(b.get("params_total"), a.get("params_total")),
            "size_ratio": _ratio(b.get("size_on_disk_mb"), a.get("size_on_disk_mb")),
            "speedup": _ratio(a.get("samples_per_s"), b.get("samples_per_s")),
            "retention_pct": {k: _pct(a["metrics"].get(k), v) for k, v in b["metrics"].items()
                              if k not in LOWER_IS_BETTER},
        }
        if evaluated is not None:
            ea, eb = evaluated[m], evaluated[ref]
            out[f"{m} vs {ref}"]["paired"] = paired(cfg, examples, (ea.preds, ea.per_example),
                                                     (eb.preds, eb.per_example))
    return out


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _pct(value, reference):
    return round(100.0 * value / reference, 2) if value is not None and reference else None
