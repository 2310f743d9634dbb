"""The study's numbers: every system on the same test split, means over seeds, paired intervals.

Systems: ``copy_source`` and ``delete_toxic_words`` (the trivial rows), the ``teacher``, and every
method (``ce_only`` included), each read from the ``predictions_<name>.jsonl`` its run's benchmark
wrote. Per system and seed: BLEU (sacreBLEU), chrF, ROUGE-L (multi-reference, :mod:`metrics`) and
the style score (% of outputs :mod:`metrics.style` calls non-toxic); per system the mean over
seeds. One bootstrap serves everything (:func:`metrics.bootstrap.resampled_scores`): the test
examples are resampled, the SAME resamples for every system and seed, so that

* a system's interval is that of its mean over seeds;
* ``method - ce_only`` is the mean over seeds of (method_seed - ce_only_seed), seed s of the method
  paired with seed s of ce_only (same initialisation), and its interval resamples the examples
  jointly for all seeds; "helps" / "hurts" when the interval excludes 0, else "no significant
  difference";
* the teacher against each trivial system is paired the same way.

Retention is a system's chrF over the teacher's (x 100); speedup is the teacher's latency p50 over
the system's, both measured by the same benchmark run (so under the same machine load), averaged
over seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.verdict import TRIVIAL  # name -> what the trivial system does
from metrics.bootstrap import _percentile_interval, metric_statistics, resampled_scores
from metrics.style import StyleClassifier
from utils.files import damaged, fields, read_json, read_jsonl
from utils.errors import UserError

METRICS = {"sacrebleu": "BLEU", "chrf": "chrF", "rougeL": "ROUGE-L", "style_nontoxic": "non-toxic %"}


@dataclass
class SystemRun:
    """One system's outputs on the test split for one seed, and its latency in that benchmark."""

    predictions: list[str]
    latency_ms: float | None = None          # the system's latency p50 (None for a rule)
    teacher_latency_ms: float | None = None  # the teacher's, in the same benchmark run


@dataclass
class System:
    name: str
    kind: str                                 # "trivial", "teacher" or "method"
    runs: dict[int, SystemRun] = field(default_factory=dict)  # seed -> outputs (one entry for fixed systems)


def rebenchmark(run_dir: Path) -> str:
    """The fix for a damaged report of a finished run: its models are kept, its benchmark redone."""
    return (f"delete {Path(run_dir) / 'benchmark_results.json'} and rerun the study (without --aggregate-only): "
            f"that run is benchmarked again, its trained models are kept")


def read_predictions(path: Path, sources: list[str]) -> list[str]:
    """The predictions of a benchmark's predictions_<name>.jsonl, checked against the test sources."""
    path = Path(path)
    if not path.is_file():
        if (path.parent / "benchmark_results.json").is_file():
            raise UserError(f"{path} is missing from a finished run; {rebenchmark(path.parent)}")
        raise UserError(f"{path} is missing: its run has not finished; run the study (without --aggregate-only)")
    rows = read_jsonl(path, rebenchmark(path.parent), lambda r: fields(r, source=str, prediction=str))
    got = [r["source"] for r in rows]
    if len(got) < len(sources) and got == sources[:len(got)]:
        raise damaged(path, f"cut short: {len(got)} of {len(sources)} test sources", rebenchmark(path.parent))
    if got != sources:
        raise UserError(f"{path}: its sources are not the study's test split (in order): the run was benchmarked "
                        f"on other data; delete its run directory and rerun the study")
    return [r["prediction"] for r in rows]


def latency(results_path: Path, name: str) -> float | None:
    """latency_p50_ms of model ``name`` in a benchmark_results.json (which must list it)."""
    fix = rebenchmark(Path(results_path).parent)
    records = read_json(results_path, fix, _results_problem)["models"]
    record = next((r for r in records if r["name"] == name), None)
    if record is None:
        raise damaged(results_path, f"it lists no model {name!r}", fix)
    return record.get("latency_p50_ms")


def _results_problem(data) -> str:
    why = fields(data, models=list)
    for i, r in enumerate([] if why else data["models"]):
        if fields(r, name=str):
            return f"models[{i}]: {fields(r, name=str)}"
        if not latency_value(r.get("latency_p50_ms")):
            return f"models[{i}].latency_p50_ms is {r['latency_p50_ms']!r:.40}"
    return why


def latency_value(value) -> bool:
    """A latency in ms: absent (None) or a finite number >= 0."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                             and value >= 0)


def aggregate(systems: list[System], test, train, n_resamples: int, confidence: float, seed: int = 0) -> dict:
    """The study's results (see the module docstring). ``test`` and ``train``: data_loader Examples."""
    references = [e.references for e in test]
    style = StyleClassifier.fit([e.source for e in train], [r for e in train for r in e.references])
    boot = _Bootstrap(systems, references, style, n_resamples, seed, confidence)
    by_name = {s.name: s for s in systems}
    teacher_chrf = boot.mean("teacher", sorted(by_name["teacher"].runs))["chrf"]
    vs_trivial = {t: boot.paired("teacher", t, [0], [0], ("beats", "is below")) for t in TRIVIAL if t in by_name}
    vs_ce = {s.name: boot.paired(s.name, "ce_only", sorted(s.runs), sorted(by_name["ce_only"].runs))
             for s in systems if s.kind == "method" and s.name != "ce_only" and "ce_only" in by_name}
    return {
        "num_test_sources": len(test), "num_test_references": sum(len(r) for r in references),
        "num_train_sources": len(train), "bootstrap_samples": n_resamples, "confidence": confidence,
        "metrics": METRICS,
        "style_classifier": style.accuracy([e.source for e in test], [r for e in test for r in e.references]),
        "systems": {s.name: _row(s, boot, teacher_chrf) for s in systems},
        "vs_ce_only": vs_ce,
        "teacher_vs_trivial": vs_trivial,
        "teacher_beats_trivial": {k: all(v[k]["outcome"] == "beats" for v in vs_trivial.values())
                                  for k in METRICS} if vs_trivial else {},
    }


class _Bootstrap:
    """Every (system, seed)'s sufficient statistics and its scores on the same resamples of the test set."""

    def __init__(self, systems, references, style, n_resamples: int, seed: int, confidence: float):
        keys = [(s.name, x) for s in systems for x in sorted(s.runs)]
        stats = [_statistics(s.runs[x].predictions, references, style) for s in systems for x in sorted(s.runs)]
        self.stats = dict(zip(keys, stats))
        self.samples = dict(zip(keys, resampled_scores(stats, n_resamples, seed)))
        self.confidence = confidence

    def mean(self, name: str, seeds) -> dict[str, float]:
        """Each metric on the full test set, the mean over ``seeds``."""
        return {k: float(np.mean([self.stats[name, x][k].corpus() for x in seeds])) for k in METRICS}

    def interval(self, name: str, seeds) -> dict[str, list[float]]:
        """The interval of that mean: the mean over seeds on each resample."""
        return {k: list(_percentile_interval(np.mean([self.samples[name, x][k] for x in seeds], axis=0),
                                             self.confidence)) for k in METRICS}

    def paired(self, a: str, b: str, seeds_a, seeds_b, words=("helps", "hurts")) -> dict:
        """Mean over i of (a at seeds_a[i] - b at seeds_b[i]), its interval and its word, per metric."""
        out = {}
        for k in METRICS:
            full = np.mean([self.stats[a, x][k].corpus() - self.stats[b, y][k].corpus()
                            for x, y in zip(seeds_a, seeds_b)])
            res = np.mean([self.samples[a, x][k] - self.samples[b, y][k] for x, y in zip(seeds_a, seeds_b)], axis=0)
            low, high = _percentile_interval(res, self.confidence)
            out[k] = {"difference": float(full), "low": low, "high": high,
                      "outcome": words[0] if low > 0 else words[1] if high < 0 else "no significant difference"}
        return out


def _row(s: System, boot: _Bootstrap, teacher_chrf: float) -> dict:
    """One system's line of the table: metrics and intervals, per seed too, retention, speedup."""
    seeds = sorted(s.runs)
    metrics = boot.mean(s.name, seeds)
    speedups = [r.teacher_latency_ms / r.latency_ms for r in s.runs.values() if r.latency_ms and r.teacher_latency_ms]
    latencies = [r.latency_ms for r in s.runs.values() if r.latency_ms]
    return {
        "kind": s.kind, "seeds": seeds if s.kind == "method" else [],
        "metrics": metrics, "ci": boot.interval(s.name, seeds),
        "per_seed": {k: [boot.stats[s.name, x][k].corpus() for x in seeds] for k in METRICS},
        "retention_chrf_pct": 100.0 * metrics["chrf"] / teacher_chrf if s.kind != "trivial" and teacher_chrf else None,
        "speedup": 1.0 if s.kind == "teacher" else float(np.mean(speedups)) if s.kind == "method" and speedups else None,
        "latency_p50_ms": float(np.mean(latencies)) if latencies else None,
    }


def _statistics(predictions: list[str], references, style: StyleClassifier) -> dict:
    """The sufficient statistics of the study's metrics for one system and seed."""
    nontoxic = (100.0 * style.nontoxic(predictions)).tolist()
    stats = metric_statistics(predictions, references, ("rouge", "sacrebleu", "chrf"),
                              per_example={"style_nontoxic": nontoxic})
    return {k: stats[k] for k in METRICS}
