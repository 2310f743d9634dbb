"""Benchmark: quality, speed and size of each model, and what the student kept of the teacher.

Every model is decoded with the same settings (recorded in the results). All report files
are rendered from one list of per-model records, so they cannot disagree:

* ``benchmark_results.json``  everything: settings, hardware, versions, records, comparison
* ``comparison_table.csv``    one row per model, one column per metric
* ``benchmark_report.txt``    an aligned table plus the student-vs-teacher comparison
* ``predictions_<model>.jsonl`` source, references and prediction per example

Comparison (student vs teacher): compression ratio = teacher params / student params,
speedup = student samples/s / teacher samples/s, retention % = student / teacher x 100
for every quality metric.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from generation import generate_texts, generation_config
from metrics import compute_metrics, sacrebleu_signatures
from utils import UserError, atomic_write_text, count_parameters, log, write_json

SPEED_KEYS = ("samples_per_s", "tokens_per_s", "generation_s")
SIZE_KEYS = ("params_total", "params_trainable", "size_on_disk_mb")


@dataclass
class BenchModel:
    name: str                     # "teacher", "student" or a baseline's name
    model: torch.nn.Module | None  # None for the copy-the-source baseline
    tokenizer: object
    path: Path | None = None


def run_benchmark(models: list[BenchModel], run) -> dict:
    """Evaluate ``models`` on the configured split and write the reports into run.output_dir."""
    cfg, out = run.cfg.benchmark, run.output_dir
    examples = _examples(run)
    models = models + _baselines(models, cfg.baselines)
    log.info("benchmark: %d %s examples, models %s", len(examples), cfg.split, ", ".join(m.name for m in models))
    records = [evaluate_model(m, examples, run) for m in models]
    results = {
        "split": cfg.split,
        "num_examples": len(examples),
        "decoding": _decoding_settings(cfg),
        "sacrebleu_signatures": sacrebleu_signatures(),
        "environment": environment(run.device, run.precision),
        "models": records,
        "comparison": compare(records),
    }
    write_reports(results, out)
    return results


def _examples(run):
    cfg = run.cfg.benchmark
    examples = getattr(run.splits, cfg.split)
    if cfg.max_samples:
        examples = examples[:cfg.max_samples]
    if not examples:
        raise UserError(f"benchmark.split {cfg.split!r} is empty; choose another split or adjust data.split_ratios")
    return examples


def _baselines(models: list[BenchModel], names: list[str]) -> list[BenchModel]:
    """Reference points that show whether the trained models learned anything."""
    out = []
    ref = next((m for m in reversed(models) if m.model is not None), None)
    for name in names:
        if name == "copy_source":
            out.append(BenchModel("copy_source", None, ref.tokenizer if ref else None))
        elif name == "untrained_student" and ref is not None:
            from transformers import AutoModelForSeq2SeqLM
            torch.manual_seed(0)
            untrained = AutoModelForSeq2SeqLM.from_config(ref.model.config)
            out.append(BenchModel(f"untrained_{ref.name}", untrained, ref.tokenizer))
    return out


def evaluate_model(bm: BenchModel, examples, run) -> dict:
    """Predictions, quality metrics, speed and size of one model."""
    cfg, data = run.cfg.benchmark, run.cfg.data
    sources = [e.source for e in examples]
    record = {"name": bm.name, "path": str(bm.path) if bm.path else None}
    if bm.model is None:  # copy_source: the input itself, a floor any useful model must beat
        preds = list(sources)
    else:
        model = bm.model.to(run.device).eval()
        gen_config = generation_config(cfg, model, bm.tokenizer)
        record["generation_config"] = gen_config.to_diff_dict()
        gen = dict(prefix=data.prefix, max_source_length=data.max_source_length, gen_config=gen_config,
                   batch_size=cfg.batch_size, device=run.device, precision=run.precision)
        if cfg.warmup_batches:  # first calls pay for allocation and kernel selection
            generate_texts(model, bm.tokenizer, sources[:cfg.batch_size * cfg.warmup_batches], **gen)
        _sync(run.device)
        t0 = time.perf_counter()
        preds, n_tokens = generate_texts(model, bm.tokenizer, sources, **gen)
        _sync(run.device)
        elapsed = time.perf_counter() - t0
        total, trainable = count_parameters(model)
        record.update(params_total=total, params_trainable=trainable, size_on_disk_mb=_disk_mb(bm),
                      generation_s=round(elapsed, 3), samples_per_s=round(len(sources) / elapsed, 3),
                      tokens_per_s=round(n_tokens / elapsed, 1))
        model.to("cpu")  # one model on the accelerator at a time
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    record["metrics"] = {k: round(v, 4) for k, v in
                         compute_metrics(preds, [e.references for e in examples], cfg.metrics).items()}
    _write_predictions(run.output_dir / f"predictions_{bm.name}.jsonl", examples, preds)
    log.info("benchmark %s: %s", bm.name, " ".join(f"{k} {v:.2f}" for k, v in record["metrics"].items()))
    return record


def _disk_mb(bm: BenchModel) -> float:
    """Megabytes of saved weights (safetensors, else PyTorch .bin); a model without a directory
    is saved to a temporary one in safetensors to be measured the same way."""
    import tempfile
    if bm.path is not None and Path(bm.path).is_dir():
        return _weights_mb(Path(bm.path))
    with tempfile.TemporaryDirectory() as tmp:
        bm.model.save_pretrained(tmp, safe_serialization=True)
        return _weights_mb(Path(tmp))


def _weights_mb(directory: Path) -> float:
    files = list(directory.glob("*.safetensors")) or list(directory.glob("*.bin"))
    return round(sum(p.stat().st_size for p in files) / 2**20, 3)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _write_predictions(path: Path, examples, preds) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e, p in zip(examples, preds):
            f.write(json.dumps({"source": e.source, "references": e.references, "prediction": p},
                               ensure_ascii=False) + "\n")


def _decoding_settings(cfg) -> dict:
    return {k: getattr(cfg, k) for k in ("num_beams", "max_new_tokens", "no_repeat_ngram_size", "length_penalty",
                                          "bad_phrases", "batch_size")}


def environment(device, precision) -> dict:
    import transformers
    env = {"device": str(device), "precision": precision.name, "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# --------------------------------------------------------------------------- comparison
def compare(records: list[dict]) -> dict:
    """Student vs teacher: compression, speedup and retention % per metric (empty without a pair)."""
    by_name = {r["name"]: r for r in records}
    teacher, student = by_name.get("teacher"), by_name.get("student")
    if not (teacher and student):
        return {}
    return {
        "compression_ratio": _ratio(teacher.get("params_total"), student.get("params_total")),
        "size_ratio": _ratio(teacher.get("size_on_disk_mb"), student.get("size_on_disk_mb")),
        "speedup": _ratio(student.get("samples_per_s"), teacher.get("samples_per_s")),
        "retention_pct": {k: _pct(student["metrics"].get(k), v) for k, v in teacher["metrics"].items()},
    }


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _pct(student, teacher):
    return round(100.0 * student / teacher, 2) if student is not None and teacher else None


# --------------------------------------------------------------------------- reports
def table_rows(results: dict) -> tuple[list[str], list[list]]:
    """The models x metrics table shared by the CSV and the text report."""
    metric_keys = list(results["models"][0]["metrics"])
    header = ["model", *metric_keys, *SIZE_KEYS, *SPEED_KEYS]
    rows = [[r["name"], *(r["metrics"].get(k) for k in metric_keys), *(r.get(k) for k in SIZE_KEYS + SPEED_KEYS)]
            for r in results["models"]]
    return header, rows


def write_reports(results: dict, out: Path) -> None:
    write_json(out / "benchmark_results.json", results)
    header, rows = table_rows(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([[("" if v is None else v) for v in row] for row in rows])
    atomic_write_text(out / "comparison_table.csv", buf.getvalue())
    atomic_write_text(out / "benchmark_report.txt", render_text(results, header, rows))
    log.info("benchmark reports written to %s", out)


def render_text(results: dict, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    d, env = results["decoding"], results["environment"]
    out = [f"Benchmark on {results['num_examples']} {results['split']} examples "
           f"({env['device']}, {env['precision']}, torch {env['torch']}, transformers {env['transformers']})",
           "Decoding (same for every model): " + ", ".join(f"{k}={v}" for k, v in d.items()), "",
           line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])]
    c = results["comparison"]
    if c:
        out += ["", "Student vs teacher",
                f"  compression ratio (teacher params / student params): {_fmt(c['compression_ratio'])}x",
                f"  size on disk ratio: {_fmt(c['size_ratio'])}x",
                f"  speedup (student samples/s / teacher samples/s): {_fmt(c['speedup'])}x",
                "  retention % (student / teacher x 100):"]
        out += [f"    {k:<10} {_fmt(v)}" for k, v in c["retention_pct"].items()]
    out += ["", "sacreBLEU signatures: " + "; ".join(f"{k}: {v}" for k, v in results["sacrebleu_signatures"].items())]
    return "\n".join(out) + "\n"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
