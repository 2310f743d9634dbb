"""Benchmark: quality, speed and size of each model, and what the student kept of the teacher.

Every model is decoded with the same settings (recorded in the results). All report files
are rendered from one results dict, so they cannot disagree:

* ``benchmark_results.json``  everything: settings, hardware, versions, records, comparisons
* ``comparison_table.csv``    one row per model, one column per metric (and its interval)
* ``benchmark_report.txt``    aligned tables plus each comparison
* ``predictions_<model>.jsonl`` source, references and prediction per example

Comparisons (each candidate vs the teacher, the student vs other candidates): compression
ratio = reference params / model params, speedup = model samples/s / reference samples/s,
retention % = model / reference x 100 for every quality metric.

Each model's speed, memory and predictions are measured in a process of its own.

Modules: ``core`` (evaluation and comparison), ``quality`` (metrics, intervals, paired tests),
``measure`` (speed, memory, size, environment; the per-model child process), ``report`` (the three
files and the CSV's comparison columns), ``plots`` (the PNG figures).
"""
from benchmark.core import BenchModel, compare, run_benchmark

__all__ = ["BenchModel", "compare", "run_benchmark"]
