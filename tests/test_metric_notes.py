"""sacrebleu's "forgot to detokenize" warning: one note on the metric in the report, no log lines."""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import torch

import metrics.core
from benchmark.core import BenchModel, run_benchmark
from metrics import bootstrap_ci, compute_metrics
from settings import BenchmarkConfig

N = 110  # sacrebleu warns from 100 outputs ending in a tokenized period


def examples():
    return [SimpleNamespace(source=f"the parcel {i} arrived late", references=[f"The parcel {i} arrived late."])
            for i in range(N)]


def fake_run(tmp_path):
    cfg = BenchmarkConfig(metrics=["rouge", "sacrebleu", "chrf"], bootstrap_samples=20, baselines=[])
    return SimpleNamespace(cfg=SimpleNamespace(benchmark=cfg), splits=SimpleNamespace(test=examples()),
                           output_dir=tmp_path, device=torch.device("cpu"), precision=SimpleNamespace(name="fp32"))


def sacrebleu_said(text: str) -> bool:
    return "forgot to detokenize" in text or "tokenized period" in text


def test_a_benchmark_of_tokenized_outputs_notes_it_once(tmp_path, capfd, caplog):
    caplog.set_level(logging.WARNING)
    models = [BenchModel("teacher", None, None, rule=lambda s: s + " ."),            # tokenized: "late ."
              BenchModel("student", None, None, rule=lambda s: s.replace("parcel", "box") + " .")]
    results = run_benchmark(models, fake_run(tmp_path))
    report = (tmp_path / "benchmark_report.txt").read_text()
    notes = [n for n in results["notes"] if n.startswith("sacreBLEU:")]
    assert len(notes) == 1 and "outputs look tokenized" in notes[0] and "may not be comparable" in notes[0]
    assert report.count("sacreBLEU: the outputs look tokenized") == 1
    # under the metrics: after the quality table, before the next section
    assert report.index("Quality") < report.index("Notes on the metrics") < report.index(notes[0]) \
        < report.index("Diversity of the outputs")
    assert json.loads((tmp_path / "benchmark_results.json").read_text())["notes"] == results["notes"]
    out, err = capfd.readouterr()
    assert not sacrebleu_said(out + err)
    assert not [r for r in caplog.records if r.name == "sacrebleu"]
    assert not [r for r in caplog.records if sacrebleu_said(r.getMessage()) and "sacreBLEU:" not in r.getMessage()]


def test_detokenized_outputs_get_no_note(tmp_path, capfd):
    results = run_benchmark([BenchModel("teacher", None, None, rule=lambda s: s.capitalize() + ".")],
                            fake_run(tmp_path))
    assert not [n for n in results["notes"] if n.startswith("sacreBLEU")]
    assert "Notes on the metrics" not in (tmp_path / "benchmark_report.txt").read_text()
    assert not sacrebleu_said("".join(capfd.readouterr()))


def test_without_a_notes_list_it_is_logged_once_per_process(monkeypatch, capfd, caplog):
    monkeypatch.setattr(metrics.core, "_LOGGED_NOTES", set())
    caplog.set_level(logging.WARNING)
    preds, refs = [e.source + " ." for e in examples()], [e.references for e in examples()]
    for _ in range(3):   # e.g. validation during training, at every evaluation
        compute_metrics(preds, refs, ["sacrebleu"])
        bootstrap_ci(preds, refs, ["sacrebleu"], n_resamples=10)
    logged = [r for r in caplog.records if sacrebleu_said(r.getMessage())]
    assert len(logged) == 1 and logged[0].name == "kd" and logged[0].getMessage().startswith("sacreBLEU: ")
    assert not sacrebleu_said("".join(capfd.readouterr()).replace(logged[0].getMessage(), ""))


def test_the_sacrebleu_logger_is_left_as_it_was():
    logger = logging.getLogger("sacrebleu")
    before = (logger.level, logger.propagate, list(logger.handlers))
    compute_metrics(["a b ."] * N, [["a b."]] * N, ["sacrebleu"], notes=[])
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
