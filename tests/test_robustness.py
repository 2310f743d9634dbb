"""Runs that go wrong: refused overwrites, early checks, resumes in place, fp16 overflow, odd splits."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from main import main
from test_training import make_trainer
from utils.errors import UserError


def run(cfg_path, out, *extra):
    return main(["--config", str(cfg_path), "--output_dir", str(out), *map(str, extra)])


def test_benchmark_reports_are_replaced_only_on_request(tiny_config_dict, write_config, tmp_path):
    tiny_config_dict["benchmark"]["baselines"] = ["copy_source"]
    cfg = write_config(tiny_config_dict)
    out = tmp_path / "run"
    assert run(cfg, out) == 0
    before = (out / "benchmark_results.json").read_text()
    student = out / "student" / "final"
    assert run(cfg, out, "--mode", "benchmark", "--student_path", student) == 2
    assert (out / "benchmark_results.json").read_text() == before
    tiny_config_dict["benchmark"]["baselines"] = []
    cfg = write_config(tiny_config_dict, "no_baselines.json")
    assert run(cfg, out, "--mode", "benchmark", "--overwrite") == 0
    assert not (out / "predictions_copy_source.jsonl").exists()  # stale files of dropped models go
    assert (out / "predictions_student.jsonl").exists()


def test_an_already_trained_teacher_is_used_as_is_and_benchmarked(tiny_config_dict, write_config, tmp_path):
    first = tmp_path / "first"
    assert run(write_config(tiny_config_dict), first, "--mode", "train_teacher") == 0
    tiny_config_dict["teacher"] = {"init": "pretrained", "name_or_path": str(first / "teacher/final")}
    tiny_config_dict["student"]["tokenizer"] = {"path": str(first / "teacher/final")}
    tiny_config_dict["training"]["train_teacher"] = False
    out = tmp_path / "second"
    assert run(write_config(tiny_config_dict), out) == 0
    assert not (out / "teacher").exists()
    results = json.loads((out / "benchmark_results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["teacher", "student"]
    assert results["comparison"]["student vs teacher"]["compression_ratio"] > 1


def test_config_errors_found_before_training_and_nothing_overwritten(tiny_config_dict, write_config, tmp_path, capsys):
    tiny_config_dict["distill"]["losses"] = [{"name": "vanilla_kl", "temprature": 2.0}]
    out = tmp_path / "run"
    assert run(write_config(tiny_config_dict), out) == 2
    assert "distill.losses[0]: loss 'vanilla_kl' has no option 'temprature'" in capsys.readouterr().err
    assert not (out / "teacher").exists()  # refused before the teacher trained
    tiny_config_dict["distill"]["losses"] = [{"name": "vanilla_kl"}]
    tiny_config_dict["data"]["split_ratios"] = [0.9, 0.1, 0.0]
    assert run(write_config(tiny_config_dict), out) == 2
    assert "benchmark.split 'test' is empty" in capsys.readouterr().err
    # a refused re-run leaves the earlier run's resolved config alone
    tiny_config_dict["data"]["split_ratios"] = [0.8, 0.1, 0.1]
    assert run(write_config(tiny_config_dict), out, "--mode", "train_teacher") == 0
    before = (out / "config.resolved.json").read_text()
    assert run(write_config(tiny_config_dict), out, "--mode", "train_teacher", "--set", "training.seed=7") == 2
    assert (out / "config.resolved.json").read_text() == before


def test_resume_in_place_logs_every_step_once(tiny_config_dict, write_config, tmp_path):
    tiny_config_dict["training"]["teacher"].update(max_steps=6, eval_every=2, log_every=1, save_total_limit=5)
    cfg = write_config(tiny_config_dict)
    out = tmp_path / "run"
    assert run(cfg, out, "--mode", "train_teacher") == 0
    # as if killed after step 3's checkpoint... while exporting: the final directory is half written
    shutil.rmtree(out / "teacher" / "final")
    (out / "teacher" / "final.tmp").mkdir()
    for step in (4, 6):
        (out / f"checkpoints/teacher/step_{step:08d}.pt").unlink()
    assert run(cfg, out, "--mode", "train_teacher", "--resume_from_checkpoint", "auto") == 0
    steps = [json.loads(line)["step"] for line in (out / "teacher/metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (out / "teacher/final/model.safetensors").is_file() and not (out / "teacher/final.tmp").exists()


@pytest.mark.parametrize("override, message", [
    ("training.teacher.max_steps=9", "a resume cannot change training.teacher.max_steps: 6 -> 9"),
    ("training.teacher.batch_size=4", "a resume cannot change training.teacher.batch_size: 8 -> 4"),
])
def test_resume_with_another_schedule_is_refused(override, message, tiny_config_dict, write_config, tmp_path, capsys):
    cfg = write_config(tiny_config_dict)
    out = tmp_path / "run"
    assert run(cfg, out, "--mode", "train_teacher") == 0
    ckpt = sorted((out / "checkpoints/teacher").glob("step_*.pt"))[0]
    assert run(cfg, tmp_path / "other", "--mode", "train_teacher", "--resume_from_checkpoint", ckpt,
               "--set", override) == 2
    assert message in capsys.readouterr().err


def test_fp16_overflow_skips_the_step_then_gives_up(tmp_path):
    trainer, _ = make_trainer(tmp_path, precision="fp16")
    real = trainer.loss_sums
    trainer.loss_sums = lambda batch, **kw: tuple(x * float("inf") if i == 0 else x
                                                  for i, x in enumerate(real(batch, **kw)))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    scale = trainer.scaler.get_scale()
    trainer.train_step(trainer.window_batches(0, 0))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # step skipped
    assert trainer.scaler.get_scale() < scale                                             # scale lowered
    with pytest.raises(UserError, match="use precision bf16 \\(or fp32\\) instead of fp16"):
        for _ in range(20):
            trainer.train_step(trainer.window_batches(0, 0))
    trainer.loss_sums = real
    trainer._bad_steps = 0
    trainer.train_step(trainer.window_batches(0, 0))  # recovers once losses are finite again
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_no_validation_split_trains_and_exports_the_last_model(tiny_config_dict, write_config, tmp_path):
    tiny_config_dict["data"]["split_ratios"] = [0.9, 0.0, 0.1]
    out = tmp_path / "run"
    assert run(write_config(tiny_config_dict), out) == 0
    summary = json.loads((out / "teacher/training_summary.json").read_text())
    assert summary["best_step"] is None and summary["validation"] == [] and summary["steps"] == 6
    assert (out / "student/final/model.safetensors").is_file()


def test_benchmark_without_any_0_100_metric_still_writes_its_reports(tiny_config_dict, write_config, tmp_path):
    """bertscore alone, offline: skipped with a note; no plot of scores, but no crash either."""
    tiny_config_dict["benchmark"].update(metrics=["bertscore"], bootstrap_samples=0)
    out = tmp_path / "run"
    assert run(write_config(tiny_config_dict), out) == 0
    results = json.loads((out / "benchmark_results.json").read_text())
    assert results["models"][0]["metrics"] == {} and "bertscore skipped" in results["notes"][0]
    assert not (out / "plots" / "metrics.png").exists() and (out / "benchmark_report.txt").is_file()


def test_benchmark_refuses_an_empty_split_before_replacing_anything(tiny_config_dict, write_config, tmp_path):
    cfg = write_config(tiny_config_dict)
    out = tmp_path / "run"
    assert run(cfg, out) == 0
    before = {p: p.read_bytes() for p in out.glob("*.json*")}
    tiny_config_dict["data"]["split_ratios"] = [0.9, 0.1, 0.0]
    assert run(write_config(tiny_config_dict, "empty_test.json"), out, "--mode", "benchmark", "--overwrite") == 2
    assert {p: p.read_bytes() for p in out.glob("*.json*")} == before


def test_gpu_out_of_memory_is_one_line(monkeypatch, tiny_config_dict, write_config, capsys):
    import pipeline

    def oom(cfg, args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setitem(pipeline.MODES, "train_teacher", oom)
    assert main(["--mode", "train_teacher", "--config", str(write_config(tiny_config_dict))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the GPU ran out of memory; lower training.<role>.batch_size") and "\n" not in err


def test_cpu_allocation_failure_is_one_line(monkeypatch, tiny_config_dict, write_config, capsys):
    import pipeline

    def too_big(cfg, opts):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 400000000000 bytes.")
    monkeypatch.setitem(pipeline.MODES, "train_teacher", too_big)
    assert main(["--mode", "train_teacher", "--config", str(write_config(tiny_config_dict))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not enough memory (") and "lower the model size" in err and "\n" not in err
