"""The CE-only baseline student (training.baseline / --with_baseline): built, fed and budgeted like the
distilled student, and reported against it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from main import main


def _weights(path):
    return load_file(str(path / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def zero_kd_run(tmp_path_factory):
    """full_pipeline with a KD term of weight 0: the distilled student is then trained by CE alone, so
    the baseline (same init, data, order, steps, seed) must come out with the same weights."""
    from conftest import TINY_CONFIG
    import copy
    tmp = tmp_path_factory.mktemp("baseline")
    data = copy.deepcopy(TINY_CONFIG)
    data["distill"] = {"ce_weight": 1.0, "losses": [{"name": "vanilla_kl", "weight": 0.0, "temperature": 2.0}]}
    data["training"]["student"].update(max_steps=None, epochs=2)  # the budget comes from the data
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(data))
    out = tmp / "run"
    assert main(["--config", str(cfg), "--output_dir", str(out), "--with_baseline"]) == 0
    return cfg, out


def test_baseline_is_the_student_without_the_teacher(zero_kd_run):
    _, out = zero_kd_run
    student, baseline = _weights(out / "student"), _weights(out / "student_ce")
    assert student.keys() == baseline.keys()
    for k in student:
        torch.testing.assert_close(baseline[k], student[k], rtol=1e-5, atol=1e-6)
    s = json.loads((out / "student" / "training_summary.json").read_text())
    b = json.loads((out / "student_ce" / "training_summary.json").read_text())
    assert b["role"] == "student_ce" and b["steps"] == s["steps"] > 0
    records = [json.loads(line) for line in (out / "student_ce" / "metrics.jsonl").read_text().splitlines()]
    assert all("vanilla_kl" not in r for r in records)  # no teacher term at all


def test_report_compares_the_student_with_the_baseline(zero_kd_run):
    _, out = zero_kd_run
    results = json.loads((out / "benchmark_results.json").read_text())
    assert [m["name"] for m in results["models"]][:3] == ["teacher", "student", "student_ce"]
    comp = results["comparison"]["student vs student_ce"]
    verdict = results["verdict"]["distillation"]
    assert verdict["model"] == "student" and verdict["reference"] == "student_ce"
    for metric, d in comp["paired"].items():  # identical weights: identical predictions, zero difference
        assert d["difference"] == 0 and d["low"] == 0 and d["high"] == 0
        assert verdict["metrics"][metric]["outcome"] == "no significant difference"
    text = (out / "benchmark_report.txt").read_text()
    head = text.split("Quality (")[0]
    assert "no significant difference from the CE-only student on chrf" in head
    header = (out / "comparison_table.csv").read_text().splitlines()[0]
    assert "vs_student_ce_chrf_diff_low" in header


def test_transfer_set_is_the_students_only_and_the_budget_is_shared(zero_kd_run, tmp_path):
    """With pseudo-labels on a generated transfer set the distilled student sees more pairs; the baseline
    trains on the labeled pairs alone, for the same number of optimizer steps."""
    cfg, out = zero_kd_run
    data = json.loads(cfg.read_text())
    data["data"]["synthetic"]["unlabeled_examples"] = 60
    data["distill"] = {"ce_weight": 0.5, "losses": [{"name": "vanilla_kl", "weight": 0.5, "temperature": 2.0}],
                       "pseudo_labels": {"num_beams": 1, "max_new_tokens": 12}}
    new_cfg = tmp_path / "transfer.json"
    new_cfg.write_text(json.dumps(data))
    run = tmp_path / "run"
    assert main(["--mode", "distill_student", "--config", str(new_cfg), "--output_dir", str(run),
                 "--teacher_path", str(out / "teacher" / "final"), "--with_baseline"]) == 0
    log = (run / "logs" / "run.log").read_text()
    import re
    pairs = {role: int(n) for role, n in re.findall(r"INFO (student|student_ce): (\d+) training pairs", log)}
    labeled = 96  # 80% of the 120 generated examples, one reference each
    assert pairs["student_ce"] == labeled and pairs["student"] > labeled + 40
    steps = {r: json.loads((run / r / "training_summary.json").read_text())["steps"] for r in ("student", "student_ce")}
    assert steps["student"] == steps["student_ce"] == 2 * -(-pairs["student"] // 8)  # 2 epochs of the larger set


def _baseline_run(zero_kd_run, run: Path) -> list[str]:
    """Distill with the baseline into ``run``; the arguments of that command."""
    cfg, out = zero_kd_run
    args = ["--mode", "distill_student", "--config", str(cfg), "--output_dir", str(run),
            "--teacher_path", str(out / "teacher" / "final"), "--with_baseline"]
    assert main(args) == 0
    return args


def _interrupt_baseline(run: Path) -> None:
    """As if the baseline stopped before exporting its final model: a resume continues from its checkpoints."""
    import shutil
    shutil.rmtree(run / "student_ce" / "final")


def test_baseline_stage_refuses_resumes_and_overwrites_like_the_student(zero_kd_run, tmp_path):
    run = tmp_path / "run"
    args = _baseline_run(zero_kd_run, run)
    before = _weights(run / "student_ce")
    _interrupt_baseline(run)
    assert main(args + ["--resume_from_checkpoint", "auto"]) == 0
    for k, v in _weights(run / "student_ce").items():
        torch.testing.assert_close(v, before[k])
    assert main(args) == 2  # an earlier run is never replaced silently
    assert main(args + ["--overwrite"]) == 0
    assert not (run / "student_ce.new").exists() and (run / "student_ce" / "final").is_dir()


def test_baseline_messages_and_resume_policy_name_the_students_settings(tmp_path):
    """student_ce trains with training.student.*: a NaN stop and the resume policy must name those keys."""
    from types import SimpleNamespace
    from checkpoints import resume_changes
    from training import Trainer, TrainJob
    from utils.errors import UserError
    job = SimpleNamespace(role="student_ce", section=TrainJob.section.fget(SimpleNamespace(role="student_ce")),
                          checkpoint_dir=tmp_path)
    with pytest.raises(UserError, match=r"lower training\.student\.learning_rate"):
        Trainer._stop_not_finite(SimpleNamespace(job=job), "the loss is nan")
    saved = {"training": {"student": {"learning_rate": 1e-3, "epochs": 2}}}
    now = {"training": {"student": {"learning_rate": 5e-4, "epochs": 2}}}
    refused, changed = resume_changes(saved, now, job.section)
    assert refused == [] and changed == ["training.student.learning_rate: 0.001 -> 0.0005"]


def test_baseline_resume_may_lower_the_students_learning_rate(zero_kd_run, tmp_path):
    """A resume of student_ce applies a changed training.student.learning_rate (what it trains with)."""
    run = tmp_path / "run"
    args = _baseline_run(zero_kd_run, run)
    _interrupt_baseline(run)
    assert main(args + ["--resume_from_checkpoint", "auto", "--set", "training.student.learning_rate=1e-4"]) == 0
    summary = json.loads((run / "student_ce" / "training_summary.json").read_text())
    assert [r["changed"] for r in summary["resumes"]] == [["training.student.learning_rate: 0.003 -> 0.0001"]]
