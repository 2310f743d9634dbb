"""comparison_table.csv carries the comparisons; retention against a zero score is explained."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest

from benchmark.core import Evaluated, compare
from benchmark.report import write_reports
from settings import BenchmarkConfig


def _results(tmp_path):
    examples = [SimpleNamespace(source=f"you are a {w} man", references=[f"you are a kind man {i}"])
                for i, w in enumerate(["dumb", "stupid", "lame", "rude", "bad", "mean"])]
    refs = [e.references[0] for e in examples]
    preds = {"teacher": ["" for _ in refs], "student": [r.replace("kind", "nice") for r in refs],
             "baseline": [r.split()[0] for r in refs]}
    cfg = BenchmarkConfig(metrics=["rouge", "sacrebleu"], bootstrap_samples=200)
    from benchmark.quality import intervals, score
    evaluated = {}
    for name, p in preds.items():
        metrics, per_example, _ = score(cfg, examples, p, "cpu")
        per_example["fluency_perplexity"] = [10.0 + i + (name == "student") for i in range(len(p))]
        metrics["fluency_perplexity"] = sum(per_example["fluency_perplexity"]) / len(p)
        record = {"name": name, "metrics": metrics, "ci": intervals(cfg, examples, p, per_example),
                  "params_total": {"teacher": 1000, "student": 250, "baseline": 500}[name],
                  "size_on_disk_mb": 1.0, "samples_per_s": {"teacher": 10.0, "student": 30.0, "baseline": 20.0}[name]}
        evaluated[name] = Evaluated(record, p, per_example, [])
    records = [e.record for e in evaluated.values()]
    results = {"split": "test", "num_examples": len(examples), "decoding": {"num_beams": 1}, "confidence": 0.95,
               "environment": {"device": "cpu", "precision": "fp32", "torch": "x", "transformers": "y"},
               "models": records, "comparison": compare(records, evaluated, examples, cfg), "notes": [],
               "sacrebleu_signatures": {"sacrebleu": "s"}}
    write_reports(results, tmp_path)
    return results


def test_csv_has_every_comparison_figure_of_the_json(tmp_path):
    results = _results(tmp_path)
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "comparison_table.csv").open())}
    assert list(results["comparison"]) == ["student vs teacher", "baseline vs teacher", "student vs baseline"]
    for comp in results["comparison"].values():
        row, p = rows[comp["model"]], f"vs_{comp['reference']}_"
        for key in ("compression_ratio", "size_ratio", "speedup"):
            assert float(row[p + key]) == comp[key]
        for metric, d in comp["paired"].items():
            for field, name in (("difference", "diff"), ("low", "diff_low"), ("high", "diff_high"),
                                ("p_value", "p_value")):
                assert float(row[f"{p}{metric}_{name}"]) == pytest.approx(d[field])
            pct = comp["retention_pct"].get(metric)
            assert row[f"{p}{metric}_retention_pct"] == ("" if pct is None else str(pct))
    assert rows["student"]["vs_teacher_compression_ratio"] == "4.0" and rows["student"]["vs_teacher_speedup"] == "3.0"
    assert rows["teacher"]["vs_teacher_speedup"] == ""  # the reference itself is not compared
    json.loads((tmp_path / "benchmark_results.json").read_text())


def test_retention_against_a_zero_score_and_lower_is_better_are_explained(tmp_path):
    results = _results(tmp_path)
    comp = results["comparison"]["student vs teacher"]
    assert results["models"][0]["metrics"]["rougeL"] == 0 and comp["retention_pct"]["rougeL"] is None
    assert "fluency_perplexity" not in comp["retention_pct"] and "fluency_perplexity" in comp["paired"]
    text = (tmp_path / "benchmark_report.txt").read_text()
    section = text.split("student vs teacher")[1].split("baseline vs teacher")[0]
    assert "rougeL" in section and "n/a (teacher scores 0.00)" in section
    assert "n/a (lower is better)" in section and "diff 1.00" in section
