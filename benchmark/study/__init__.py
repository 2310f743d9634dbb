"""The distillation study: ``python -m benchmark.study --config configs/studies/paradetox.yaml``.

Does distillation beat training the small model alone? One command answers it: a seeded split
(:mod:`.split`), the teacher trained once and every method x seed distilled and benchmarked, each
run a resumable ``python main.py`` subprocess (:mod:`.runs`), then one table of every system with
intervals, each method against the CE-only student (:mod:`.aggregate`, :mod:`.table`). The study
file (:mod:`.config`) names a project config and the methods. Rerunning the command after a kill
continues where it stopped.
Every check that can refuse (paths of the wrong kind, damaged files the study or its runs wrote,
``--aggregate-only`` before the runs finished: :mod:`.checks`) runs before the first file is written.

``<study_dir>`` (the study file's ``output_dir``)::

    split/train.jsonl validation.jsonl test.jsonl   the split every run reads
    split/unlabeled.jsonl         the transfer set, when the base config has one (read by the methods
                                  that name it)
    teacher/                      the teacher run (teacher/teacher/final)
    runs/<method>_seed<s>/        a full_pipeline run per method and seed (benchmark reports inside);
                                  the first method's also holds ce_only (student_ce/)
    logs/<run>.log                each run's output; study.log: one line per run started/skipped/finished
    study_results.json            every number of the table
    study_table.md                the table
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from benchmark.study.config import CE_ONLY, STUDY_DIR, StudyConfig, load_study
from utils.files import atomic_write_text, write_json
from utils.logs import attach_log_file, log, setup_logging


def run_study(config_path: str | Path, launch=None, aggregate_only: bool = False) -> dict:
    """Split, run what is unfinished, aggregate; returns the results (also written as files).
    Every check that can refuse runs before the first file is written."""
    from benchmark.study.runs import execute
    from benchmark.study.split import write_split
    setup_logging()
    study, study_dir, base_cfg, split, runs = _prepare(config_path, aggregate_only)
    attach_log_file(study_dir / "logs" / "study.log")  # the first write
    log.info("study %s: %d methods (%s) x seeds %s in %s", config_path, len(study.method_names),
             ", ".join(study.method_names), study.seeds, study_dir)
    write_split(split, study_dir / "split")
    log.info("study split: train %d, validation %d, test %d sources (%d test references), transfer set %d "
             "unlabeled sources, in %s", *(len(split[k]) for k in ("train", "validation", "test")),
             sum(len(e.references) for e in split["test"]), len(split["unlabeled"]), study_dir / "split")
    if not aggregate_only:
        execute(runs, study_dir / "logs", launch)
    results = collect(study, study_dir, split, base_cfg.benchmark)
    results.update(study_file=str(config_path), command=_command(config_path), study=dataclasses.asdict(study))
    from benchmark.study.table import render_table
    write_json(study_dir / "study_results.json", results)
    atomic_write_text(study_dir / "study_table.md", render_table(results))
    log.info("study results: %s and %s", study_dir / "study_results.json", study_dir / "study_table.md")
    return results


def _prepare(config_path, aggregate_only: bool):
    """The study, its directory, base config, split and runs, every check passed; writes nothing."""
    from settings import load_config
    from benchmark.study import checks
    from benchmark.study.runs import check_settings, plan
    from benchmark.study.split import check_split, data_overrides, split_paths, study_split
    study, base = load_study(config_path)
    study_dir = Path(study.output_dir).resolve()
    base_cfg = load_config(base, [s.replace(STUDY_DIR, str(study_dir)) for s in study.overrides])
    split = study_split(base_cfg.data, study.test_sources, study.validation_sources, study.split_seed)
    runs = plan(study, base, study_dir, data_overrides(split_paths(split, study_dir / "split"), base_cfg.data))
    checks.check_layout(config_path, study_dir, runs)
    checks.check_option_paths(runs)
    if aggregate_only:
        checks.check_all_finished(runs, study_dir, config_path)
    check_split(split, study_dir / "split")
    for run in runs:
        check_settings(run)
    checks.check_finished_runs(runs, [e.source for e in split["test"]])
    return study, study_dir, base_cfg, split, runs


def collect(study: StudyConfig, study_dir: Path, split: dict, bench) -> dict:
    """Read every run's predictions and latencies and aggregate them."""
    from benchmark.study.aggregate import System, SystemRun, aggregate, latency, read_predictions
    from benchmark.verdict import TRIVIAL
    from benchmark.study.runs import ce_only_dir, method_dir
    sources = [e.source for e in split["test"]]
    first = ce_only_dir(study, study_dir, study.seeds[0])  # the fixed systems: any run shows the same
    systems = [System(t, "trivial", {0: SystemRun(read_predictions(first / f"predictions_{t}.jsonl", sources))})
               for t in TRIVIAL]
    t_lat = latency(first / "benchmark_results.json", "teacher")
    systems.append(System("teacher", "teacher", {0: SystemRun(
        read_predictions(first / "predictions_teacher.jsonl", sources), t_lat, t_lat)}))
    for method in study.method_names:
        d = {s: ce_only_dir(study, study_dir, s) if method == CE_ONLY else method_dir(study_dir, method, s)
             for s in study.seeds}
        name = "student_ce" if method == CE_ONLY else "student"
        systems.append(System(method, "method", {s: SystemRun(
            read_predictions(d[s] / f"predictions_{name}.jsonl", sources), latency(d[s] / "benchmark_results.json", name),
            latency(d[s] / "benchmark_results.json", "teacher")) for s in study.seeds}))
    return aggregate(systems, split["test"], split["train"], bench.bootstrap_samples or 1000, bench.confidence)


def _command(config_path) -> str:
    return shlex.join(["python", "-m", "benchmark.study", "--config", str(config_path)])


__all__ = ["StudyConfig", "run_study", "collect"]
