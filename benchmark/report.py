"""The three report files, all rendered from one results dict (so they cannot disagree)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from benchmark.verdict import headline_lines
from utils.files import atomic_write_text, write_json
from utils.logs import log

SIZE_KEYS = ("params_total", "params_trainable", "size_on_disk_mb", "peak_memory_mb")
SPEED_KEYS = ("samples_per_s", "tokens_per_s", "latency_p50_ms", "latency_p95_ms")
DIVERSITY_KEYS = ("distinct_fraction", "most_frequent_fraction")  # a collapsed model has few distinct outputs


def metric_keys(results: dict) -> list[str]:
    """Every metric any model has, in first-seen order (a metric can be missing for one model,
    e.g. perplexity when all its predictions are empty)."""
    return list(dict.fromkeys(k for r in results["models"] for k in r["metrics"]))


def table_rows(results: dict) -> tuple[list[str], list[list]]:
    """The CSV: one row per model; columns: metrics with their interval bounds, size, speed, then
    the model's comparisons (``vs_<reference>_*``, empty for a model that is not compared)."""
    metric_keys_ = metric_keys(results)
    header = ["model"]
    for k in metric_keys_:
        header += [k, f"{k}_ci_low", f"{k}_ci_high"]
    header += [*DIVERSITY_KEYS, *SIZE_KEYS, *SPEED_KEYS]
    comp_header, comp_values = comparison_columns(results)
    rows = []
    for r in results["models"]:
        row = [r["name"]]
        for k in metric_keys_:
            low, high = r.get("ci", {}).get(k, (None, None))
            row += [r["metrics"].get(k), low, high]
        row += [r.get(k) for k in DIVERSITY_KEYS + SIZE_KEYS + SPEED_KEYS]
        rows.append(row + [comp_values.get((r["name"], col)) for col in comp_header])
    return header + comp_header, rows


def comparison_columns(results: dict) -> tuple[list[str], dict]:
    """Columns ``vs_<ref>_compression_ratio``, ``_size_ratio``, ``_speedup`` and per metric
    ``vs_<ref>_<metric>_retention_pct``, ``_diff``, ``_diff_low``, ``_diff_high``, ``_p_value``;
    values keyed by (model, column)."""
    header, values = [], {}
    for c in results["comparison"].values():
        prefix = f"vs_{c['reference']}_"
        cells = {f"{prefix}{k}": c[k] for k in ("compression_ratio", "size_ratio", "speedup")}
        for k in metric_keys(results):
            d = c.get("paired", {}).get(k, {})
            cells.update({f"{prefix}{k}_retention_pct": c["retention_pct"].get(k), f"{prefix}{k}_diff":
                          d.get("difference"), f"{prefix}{k}_diff_low": d.get("low"),
                          f"{prefix}{k}_diff_high": d.get("high"), f"{prefix}{k}_p_value": d.get("p_value")})
        header += [col for col in cells if col not in header]
        values.update({(c["model"], col): v for col, v in cells.items()})
    return header, values


def write_reports(results: dict, out: Path) -> None:
    write_json(out / "benchmark_results.json", results)
    header, rows = table_rows(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([[("" if v is None else v) for v in row] for row in rows])
    atomic_write_text(out / "comparison_table.csv", buf.getvalue())
    atomic_write_text(out / "benchmark_report.txt", render_text(results))
    log.info("benchmark reports written to %s", out)


def render_text(results: dict) -> str:
    d, env = results["decoding"], results["environment"]
    conf = int(round(results.get("confidence", 0.95) * 100))
    out = [f"Benchmark on {results['num_examples']} {results['split']} examples "
           f"({env['device']}, {env['precision']}, torch {env['torch']}, transformers {env['transformers']})",
           "Decoding (same for every model): " + ", ".join(f"{k}={v}" for k, v in d.items()), ""]
    out += headline_lines(results, conf) + [f"Quality (0-100, {conf}% bootstrap interval in brackets)"]
    out += _aligned(_quality_cells(results)) + _notes(results)
    out += ["", "Diversity of the outputs"] + _aligned(_diversity_cells(results))
    out += ["", "Size and speed"] + _aligned(_speed_cells(results))
    scores = {r["name"]: r["metrics"] for r in results["models"]}
    for name, comp in results["comparison"].items():
        out += ["", f"{name}"] + _comparison_lines(comp, conf, scores[comp["reference"]])
    out += ["", "sacreBLEU signatures: " + "; ".join(f"{k}: {v}" for k, v in results["sacrebleu_signatures"].items())]
    return "\n".join(out) + "\n"


def _notes(results) -> list[str]:
    """Notes on the metrics (a skipped model-based metric, sacrebleu's warnings), each once, under
    the quality table they qualify."""
    notes = results.get("notes", [])
    return ["", "Notes on the metrics"] + [f"  - {n}" for n in notes] if notes else []


def _quality_cells(results):
    """One row per metric, one column per model (models are few, metrics many)."""
    models = results["models"]
    cells = [["metric", *(r["name"] for r in models)]]
    for k in metric_keys(results):
        row = [k]
        for r in models:
            v, ci = r["metrics"].get(k), r.get("ci", {}).get(k)
            row.append(f"{fmt(v)} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else fmt(v))
        cells.append(row)
    return cells


def _diversity_cells(results):
    cells = [["model", "distinct %", "most frequent output", "its share %"]]
    for r in results["models"]:
        top = r.get("most_frequent")
        top = None if top is None else repr(top if len(top) <= 50 else top[:47] + "...")
        cells.append([r["name"], _pct(r.get("distinct_fraction")), fmt(top), _pct(r.get("most_frequent_fraction"))])
    return cells


def _pct(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def _speed_cells(results):
    keys = [k for k in SIZE_KEYS + SPEED_KEYS if any(r.get(k) is not None for r in results["models"])]
    return [["model", *keys]] + [[r["name"], *(fmt(r.get(k)) for k in keys)] for r in results["models"]]


def _comparison_lines(c: dict, conf: int, reference_scores: dict) -> list[str]:
    lines = [f"  compression ratio (params of {c['reference']} / params of {c['model']}): {fmt(c['compression_ratio'])}x",
             f"  size on disk ratio: {fmt(c['size_ratio'])}x",
             f"  speedup (samples/s of {c['model']} / samples/s of {c['reference']}): {fmt(c['speedup'])}x",
             f"  retention % ({c['model']} / {c['reference']} x 100) and paired difference "
             f"({c['model']} - {c['reference']}, {conf}% interval):"]
    if c.get("retention_caveat"):
        lines.append(f"  NOT A SUCCESS MEASURE HERE: {c['retention_caveat']}")
    for k in dict.fromkeys([*c["retention_pct"], *c.get("paired", {})]):
        pct = c["retention_pct"].get(k)
        if k not in c["retention_pct"]:
            shown = "n/a (lower is better)"
        elif pct is None:
            shown = f"n/a ({c['reference']} scores {fmt(reference_scores.get(k))})"
        else:
            shown = fmt(pct)
        diff = c.get("paired", {}).get(k)
        extra = f"   diff {fmt(diff['difference'])} [{fmt(diff['low'])}, {fmt(diff['high'])}]" if diff else ""
        lines.append(f"    {k:<18} {shown:>8}{extra}")
    return lines


def _aligned(cells: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(cells[0]))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return [line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])]


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
