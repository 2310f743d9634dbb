"""End to end: the CLI's four modes on tiny models, the report files, and bad input at the CLI."""
from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from main import main
from transformers import AutoConfig


def run_cli(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=300)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """One full_pipeline run on tiny models, shared by the assertions below."""
    from conftest import TINY_CONFIG
    tmp = tmp_path_factory.mktemp("pipeline")
    data = copy.deepcopy(TINY_CONFIG)
    data["benchmark"]["baselines"] = ["copy_source", "untrained_student"]
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(data))
    out = tmp / "run"
    assert main(["--mode", "full_pipeline", "--config", str(cfg), "--output_dir", str(out)]) == 0
    return cfg, out


def test_full_pipeline_writes_models_logs_and_reports(pipeline_run):
    _, out = pipeline_run
    for role in ("teacher", "student"):
        assert (out / role / "final" / "model.safetensors").is_file()
        assert (out / role / "final" / "tokenizer.json").is_file()
        records = [json.loads(line) for line in (out / role / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
        assert [r["step"] for r in records if "eval" in r] == [3, 6]
        assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in records if "loss" in r)
    student_terms = json.loads((out / "student" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"ce", "vanilla_kl"} <= set(student_terms)
    resolved = json.loads((out / "config.resolved.json").read_text())
    assert resolved["training"]["output_dir"] == str(out)
    assert "student objective: loss = 0.5 * CE + 0.5 * VanillaKL(T=2)" in (out / "logs" / "run.log").read_text()


def test_report_files_parse_and_agree(pipeline_run):
    _, out = pipeline_run
    results = json.loads((out / "benchmark_results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert names == ["teacher", "student", "copy_source", "untrained_student"]
    teacher, student = results["models"][:2]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu4", "sacrebleu", "chrf"):
        assert 0 <= student["metrics"][key] <= 100
    for key in ("params_total", "size_on_disk_mb", "samples_per_s", "tokens_per_s", "peak_memory_mb",
                "latency_p50_ms", "latency_p95_ms"):
        assert student[key] > 0
    assert student["latency_p50_ms"] <= student["latency_p95_ms"]
    assert student["generation_config"]["num_beams"] == 1 and student["generation_config"]["min_length"] == 0
    assert list(results["comparison"]) == ["student vs teacher"]  # reference rows are not compared
    comp = results["comparison"]["student vs teacher"]
    assert comp["compression_ratio"] == pytest.approx(teacher["params_total"] / student["params_total"], rel=1e-3)
    assert comp["speedup"] == pytest.approx(student["samples_per_s"] / teacher["samples_per_s"], rel=1e-2)
    for key, pct in comp["retention_pct"].items():
        if teacher["metrics"][key]:
            assert pct == pytest.approx(100 * student["metrics"][key] / teacher["metrics"][key], abs=0.01)
    assert results["decoding"]["num_beams"] == 1 and results["environment"]["precision"] == "fp32"
    rows = list(csv.DictReader((out / "comparison_table.csv").open()))
    assert [r["model"] for r in rows] == names
    text = (out / "benchmark_report.txt").read_text()
    from benchmark.report import fmt
    for row, record in zip(rows, results["models"]):  # the three files agree on every number
        for key, value in record["metrics"].items():
            low, high = record["ci"][key]
            assert float(row[key]) == value and float(row[f"{key}_ci_low"]) == low
            assert f"{fmt(value)} [{fmt(low)}, {fmt(high)}]" in text
        for key in ("params_total", "samples_per_s", "latency_p95_ms"):
            assert (row[key] == "") == (record.get(key) is None)
            if record.get(key) is not None:
                assert float(row[key]) == record[key] and fmt(record[key]) in text
    assert "retention %" in text and "compression ratio" in text and f"{comp['compression_ratio']:.2f}x" in text
    preds = [json.loads(line) for line in (out / "predictions_student.jsonl").read_text().splitlines()]
    assert len(preds) == results["num_examples"] and {"source", "references", "prediction"} <= set(preds[0])
    plots = {os.path.basename(p) for p in results["plots"]}
    assert plots == {"metrics.png", "quality_vs_speed.png", "training_teacher.png", "training_student.png"}
    for p in results["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(p) > 5000
    copy_rows = [json.loads(line) for line in (out / "predictions_copy_source.jsonl").read_text().splitlines()]
    assert all(r["prediction"] == r["source"] for r in copy_rows)


def test_modes_one_by_one_and_refusal_to_overwrite(pipeline_run, tmp_path):  # runs last: it overwrites
    cfg, out = pipeline_run
    # benchmark alone on the pair the pipeline trained, into another directory
    bench = tmp_path / "bench"
    assert main(["--mode", "benchmark", "--config", str(cfg), "--output_dir", str(bench),
                 "--teacher_path", str(out / "teacher/final"), "--student_path", str(out / "student/final")]) == 0
    assert json.loads((bench / "benchmark_results.json").read_text())["comparison"]["student vs teacher"]["compression_ratio"] > 1
    # one model only: no comparison, still all three files
    single = tmp_path / "single"
    assert main(["--mode", "benchmark", "--config", str(cfg), "--output_dir", str(single),
                 "--student_path", str(out / "student/final")]) == 0
    results = json.loads((single / "benchmark_results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["student", "copy_source", "untrained_student"]
    assert results["comparison"] == {}
    # distilling again into the same directory is refused, the earlier student untouched
    before = (out / "student/final/model.safetensors").read_bytes()
    assert main(["--mode", "distill_student", "--config", str(cfg), "--output_dir", str(out)]) == 2
    assert (out / "student/final/model.safetensors").read_bytes() == before
    assert main(["--mode", "distill_student", "--config", str(cfg), "--output_dir", str(out), "--overwrite"]) == 0


def test_distill_from_a_teacher_path_in_a_new_directory(pipeline_run, tmp_path):
    cfg, out = pipeline_run
    new = tmp_path / "distill_only"
    assert main(["--mode", "distill_student", "--config", str(cfg), "--output_dir", str(new),
                 "--teacher_path", str(out / "teacher/final")]) == 0
    assert (new / "student/final/config.json").is_file()
    assert not (new / "teacher").exists()


def test_distill_without_a_teacher_explains_what_to_do(tiny_config_dict, write_config, tmp_path, capsys):
    code = main(["--mode", "distill_student", "--config", str(write_config(tiny_config_dict)),
                 "--output_dir", str(tmp_path / "x")])
    assert code == 2
    assert "run --mode train_teacher first" in capsys.readouterr().err


def test_cli_misspelled_key_exits_2_with_one_line_and_no_traceback(tiny_config_dict, write_config):
    tiny_config_dict["training"]["sede"] = 3
    path = write_config(tiny_config_dict)
    proc = run_cli("--mode", "train_teacher", "--config", path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: training.sede: unknown key (did you mean 'seed'?)"
    assert "Traceback" not in proc.stderr


def test_cli_help_lists_every_mode_with_an_example():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for mode in ("train_teacher", "distill_student", "benchmark", "full_pipeline"):
        assert f"python main.py --mode {mode}" in proc.stdout
    for flag in ("--teacher_config", "--student_config", "--resume_from_checkpoint", "--set", "--print-config"):
        assert flag in proc.stdout


def test_print_config_applies_flags_and_overrides(tiny_config_dict, write_config, tmp_path):
    proc = run_cli("--config", write_config(tiny_config_dict), "--output_dir", tmp_path / "o", "--device", "cpu",
                   "--set", "training.student.batch_size=3")
    assert proc.returncode == 0, proc.stderr
    # without --print-config this would have run; with it nothing is written
    proc = run_cli("--config", write_config(tiny_config_dict), "--output_dir", tmp_path / "p",
                   "--set", "training.student.batch_size=3", "--print-config")
    cfg = json.loads(proc.stdout)
    assert cfg["training"]["student"]["batch_size"] == 3 and cfg["training"]["output_dir"] == str(tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_cuda_requested_without_a_gpu(tiny_config_dict, write_config, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_cli("--mode", "train_teacher", "--config", write_config(tiny_config_dict), "--device", "cuda",
                   "--output_dir", tmp_path / "o")
    assert proc.returncode == 2 and "no CUDA GPU is available" in proc.stderr and "Traceback" not in proc.stderr


def test_real_data_t5_tokenizer_and_generation_metric_for_best(shared, tmp_path, write_config):
    """ParaDetox (3 references) with the genuine T5 tokenizer, T5-style models, best model by rougeL."""
    t5 = str(shared / "tokenizers" / "t5")
    arch = {"type": "t5", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "heads": 2, "d_ff": 64}
    optim = {"max_steps": 2, "batch_size": 4, "eval_every": 1, "metric_for_best": "rougeL",
             "eval_generate_samples": 4, "eval_batch_size": 4}
    cfg = {
        "teacher": {"init": "scratch", "arch": arch, "tokenizer": {"path": t5}},
        "student": {"init": "scratch", "arch": arch, "tokenizer": {"path": t5}},
        "data": {"train_file": str(shared / "data/paradetox/paradetox.tsv"), "source_column": "toxic",
                 "target_column": ["neutral1", "neutral2", "neutral3"], "prefix": "detoxify: ",
                 "max_source_length": 32, "max_target_length": 32, "max_train_samples": 16, "max_eval_samples": 4},
        "training": {"precision": "bf16", "teacher": optim, "student": optim},
        "distill": {"ce_weight": 1.0, "losses": [{"name": "vanilla_kl", "weight": 0.7, "temperature": 2.0}]},
        "benchmark": {"num_beams": 2, "no_repeat_ngram_size": 3, "length_penalty": 0.8, "max_new_tokens": 8,
                      "bad_phrases": ["idiot", "stupid"], "warmup_batches": 0},
    }
    out = tmp_path / "run"
    assert main(["--config", str(write_config(cfg)), "--output_dir", str(out)]) == 0
    summary = json.loads((out / "student/training_summary.json").read_text())
    assert summary["metric_for_best"] == "rougeL" and len(summary["validation"]) == 2
    assert summary["best_metric"] == max(v["rougeL"] for v in summary["validation"])
    results = json.loads((out / "benchmark_results.json").read_text())
    assert results["decoding"]["bad_phrases"] == ["idiot", "stupid"]
    preds = [json.loads(line) for line in (out / "predictions_student.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(1 <= len(p["references"]) <= 3 for p in preds)
    assert all("idiot" not in p["prediction"] for p in preds)
    assert AutoConfig.from_pretrained(out / "student/final").vocab_size == 32100


def test_a_baseline_student_is_benchmarked_and_compared(pipeline_run, tmp_path):
    cfg, out = pipeline_run
    data = json.loads(cfg.read_text())
    data["benchmark"]["models"] = [{"name": "baseline", "path": str(out / "teacher/final")}]
    data["benchmark"]["baselines"] = ["untrained_student"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    bench = tmp_path / "bench"
    assert main(["--mode", "benchmark", "--config", str(path), "--output_dir", str(bench),
                 "--teacher_path", str(out / "teacher/final"), "--student_path", str(out / "student/final")]) == 0
    results = json.loads((bench / "benchmark_results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["teacher", "student", "baseline", "untrained_student"]
    by_name = {m["name"]: m for m in results["models"]}
    assert by_name["untrained_student"]["params_total"] == by_name["student"]["params_total"]  # the student's shape
    assert list(results["comparison"]) == ["student vs teacher", "baseline vs teacher", "student vs baseline"]
    same = results["comparison"]["baseline vs teacher"]  # the baseline here is the teacher itself
    assert same["compression_ratio"] == 1.0 and all(v == 100.0 for v in same["retention_pct"].values() if v)


def test_detox_metrics_bertscore_and_intervals_in_the_reports(pipeline_run, tmp_path, tiny_bert, tiny_classifiers,
                                                              tiny_gpt2):
    """The detoxification recipe's metrics through the CLI, with tiny local scorer models."""
    cfg, out = pipeline_run
    data = json.loads(cfg.read_text())
    data["benchmark"].update(metrics=["rouge", "sacrebleu", "bertscore", "style_accuracy", "fluency_perplexity",
                                      "content_preservation"], bertscore_model=tiny_bert, bertscore_layers=2,
                             style_classifier=tiny_classifiers["random"], fluency_model=tiny_gpt2,
                             bootstrap_samples=200, baselines=[])
    path = tmp_path / "detox.json"
    path.write_text(json.dumps(data))
    bench = tmp_path / "bench"
    assert main(["--mode", "benchmark", "--config", str(path), "--output_dir", str(bench),
                 "--teacher_path", str(out / "teacher/final"), "--student_path", str(out / "student/final")]) == 0
    results = json.loads((bench / "benchmark_results.json").read_text())
    teacher, student = results["models"]
    expected = {"rouge1", "sacrebleu", "bertscore_f1", "style_accuracy", "style_nontoxic_pct", "fluency_perplexity",
                "content_preservation"}
    assert expected <= set(teacher["metrics"])
    # the 6-step student may say nothing at all: perplexity is then undefined, and the report says so
    assert expected - {"fluency_perplexity"} <= set(student["metrics"])
    assert all("empty" in n for n in results["notes"]), results["notes"]
    for key, (low, high) in student["ci"].items():
        assert low <= student["metrics"][key] + 1e-6 and student["metrics"][key] <= high + 1e-6, key
    comp = results["comparison"]["student vs teacher"]
    assert "fluency_perplexity" not in comp["retention_pct"]           # lower is better: no retention %
    assert set(comp["paired"]) == set(student["ci"])            # every metric gets a paired test
    assert all(-100 <= d["difference"] <= 100 and d["low"] <= d["high"] for k, d in comp["paired"].items()
               if k != "fluency_perplexity")
    header = next(csv.reader((bench / "comparison_table.csv").open()))
    assert {"bertscore_f1_ci_low", "fluency_perplexity_ci_high", "style_accuracy"} <= set(header)


def test_unavailable_scorer_models_are_skipped_with_a_note(pipeline_run, tmp_path):
    cfg, out = pipeline_run
    data = json.loads(cfg.read_text())
    data["benchmark"].update(metrics=["rouge", "bertscore", "style_accuracy"], baselines=[], bootstrap_samples=0,
                             style_classifier=str(tmp_path / "no_such_model"))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    bench = tmp_path / "bench"
    assert main(["--mode", "benchmark", "--config", str(path), "--output_dir", str(bench),
                 "--student_path", str(out / "student/final")]) == 0
    results = json.loads((bench / "benchmark_results.json").read_text())
    assert set(results["models"][0]["metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert len(results["notes"]) == 2 and all("skipped" in n for n in results["notes"])
    assert "Notes" in (bench / "benchmark_report.txt").read_text()
