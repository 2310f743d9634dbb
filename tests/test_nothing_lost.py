"""Issue 8: --overwrite that cannot destroy, resumes that tell the truth, a NaN stop that keeps a
good checkpoint, an export that a full disk cannot half-write, run.log and the resume command.

The tests share one finished tiny teacher run (6 steps, checkpoints at 3 and 6, constant learning
rate so the logged lr is the configured one) and work on copies of it.
"""
from __future__ import annotations

import copy
import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from checkpoints import load_checkpoint_file
from conftest import TINY_CONFIG
from main import main, resume_command
from test_bad_input import changes, snapshot

STEP3 = "checkpoints/teacher/step_00000003.pt"


def config() -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["training"]["teacher"].update(max_steps=6, eval_every=3, log_every=1, save_total_limit=5,
                                      scheduler="constant", learning_rate=1e-3)
    return cfg


def teacher(cfg_path, out, *extra) -> int:
    return main(["--mode", "train_teacher", "--config", str(cfg_path), "--output_dir", str(out), *map(str, extra)])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(config path, finished teacher run)."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(config()))
    assert teacher(cfg, tmp / "run") == 0
    return cfg, tmp / "run"


def copy_run(finished, dst: Path) -> Path:
    shutil.copytree(finished[1], dst)
    return dst


def only_step3(finished, dst: Path) -> Path:
    """A run directory as if stopped after step 3: its log and the step-3 checkpoint."""
    (dst / "checkpoints/teacher").mkdir(parents=True)
    shutil.copy(finished[1] / STEP3, dst / STEP3)
    shutil.copytree(finished[1] / "logs", dst / "logs")
    return dst


def lrs(out: Path) -> dict[int, float]:
    records = map(json.loads, (out / "teacher/metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["lr"] for r in records if "lr" in r}


def weights(final: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(final / "model.safetensors")


# --------------------------------------------------------------------------- 1. --overwrite
def test_a_failing_overwrite_keeps_the_earlier_run_and_a_good_one_replaces_it(finished, tmp_path, capsys):
    cfg, _ = finished
    out = copy_run(finished, tmp_path / "run")
    keep = ["teacher", "checkpoints", "config.resolved.json"]
    before = {k: snapshot(out / k) for k in keep}
    assert teacher(cfg, out, "--overwrite", "--set", "training.teacher.learning_rate=1e6",
                   "--set", "training.teacher.eval_every=1") == 2
    assert "validation loss is nan" in capsys.readouterr().err
    for k in keep:  # the earlier teacher, its checkpoints, metrics and recorded config: all untouched
        assert [c for c in changes(out / k, before[k], snapshot(out / k)) if ".new" not in c] == []
    # the failed attempt, stopped before its first checkpoint, leaves nothing behind
    assert not (out / "checkpoints/teacher.new").exists() and not (out / "teacher.new").exists()
    old = weights(out / "teacher/final")
    assert teacher(cfg, out, "--overwrite", "--set", "training.seed=7") == 0
    new = weights(out / "teacher/final")
    assert not torch.equal(old["model.shared.weight"], new["model.shared.weight"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.resolved.json", "logs", "teacher"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["teacher"]
    assert json.loads((out / "config.resolved.json").read_text())["training"]["seed"] == 7
    assert sorted(lrs(out)) == [1, 2, 3, 4, 5, 6]  # the new run's metrics only


def test_an_interrupted_overwrite_resumes_in_its_staging_directory_then_replaces(finished, tmp_path, monkeypatch):
    import signal

    from training import Trainer
    from utils.errors import TrainingInterrupted
    cfg, _ = finished
    out = copy_run(finished, tmp_path / "run")
    before = snapshot(out / "teacher")
    real_save = Trainer.save_checkpoint

    def save_then_stop(self):
        path = real_save(self)
        raise TrainingInterrupted(signal.SIGTERM, self.state.step, path)  # as if SIGTERM arrived at step 3
    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)
    assert teacher(cfg, out, "--overwrite", "--set", "training.seed=7") == 128 + signal.SIGTERM
    assert changes(out / "teacher", before, snapshot(out / "teacher")) == []  # the earlier teacher is intact
    assert (out / "checkpoints/teacher.new/step_00000003.pt").is_file()
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    # the printed command: the same flags without --overwrite, plus --resume_from_checkpoint auto
    assert teacher(cfg, out, "--set", "training.seed=7", "--resume_from_checkpoint", "auto") == 0
    straight = tmp_path / "straight"
    assert teacher(cfg, straight, "--set", "training.seed=7") == 0
    got, want = weights(out / "teacher/final"), weights(straight / "teacher/final")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not (out / "teacher.new").exists() and not (out / "checkpoints/teacher.new").exists()
    assert sorted(lrs(out)) == [1, 2, 3, 4, 5, 6]


def test_a_replacement_interrupted_mid_swap_is_completed_by_auto(finished, tmp_path, monkeypatch):
    import pipeline.stages
    cfg, _ = finished
    out = copy_run(finished, tmp_path / "run")
    monkeypatch.setattr(pipeline.stages, "replace_stage", lambda run, role: (_ for _ in ()).throw(KeyboardInterrupt))
    assert teacher(cfg, out, "--overwrite", "--set", "training.seed=7") == 130
    assert (out / "teacher.new/final/model.safetensors").is_file() and (out / "teacher/final").is_dir()
    monkeypatch.undo()
    assert teacher(cfg, out, "--set", "training.seed=7", "--resume_from_checkpoint", "auto") == 0
    assert not (out / "teacher.new").exists() and (out / "teacher/final/model.safetensors").is_file()
    assert json.loads((out / "config.resolved.json").read_text())["training"]["seed"] == 7


# --------------------------------------------------------------------------- 2. what a resume may change
def test_a_resume_applies_a_new_learning_rate_and_records_it(finished, tmp_path):
    cfg, _ = finished
    out = only_step3(finished, tmp_path / "run")
    assert teacher(cfg, out, "--resume_from_checkpoint", "auto", "--set", "training.teacher.learning_rate=1e-5",
                   "--set", "training.teacher.eval_every=1") == 0
    assert lrs(out) == {4: 1e-5, 5: 1e-5, 6: 1e-5}  # what actually ran
    assert json.loads((out / "config.resolved.json").read_text())["training"]["teacher"]["learning_rate"] == 1e-5
    assert sorted(int(p.stem[5:]) for p in (out / "checkpoints/teacher").glob("step_*.pt")) == [3, 4, 5, 6]
    ckpt = load_checkpoint_file(out / "checkpoints/teacher/step_00000006.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 1e-5
    summary = json.loads((out / "teacher/training_summary.json").read_text())
    assert summary["resumes"][0]["step"] == 3
    assert summary["resumes"][0]["changed"] == ["training.teacher.eval_every: 3 -> 1",
                                                "training.teacher.learning_rate: 0.001 -> 1e-05"]
    log = (out / "logs/run.log").read_text()  # 8: the resume is in run.log, with what changed
    assert "teacher: resumed from" in log and "step_00000003.pt at step 3" in log and "learning_rate: 0.001 -> 1e-05" in log


@pytest.mark.parametrize("override, named", [
    ("training.teacher.warmup_ratio=0.5", "training.teacher.warmup_ratio: 0.0 -> 0.5"),
    ("training.teacher.scheduler=cosine", "training.teacher.scheduler: 'constant' -> 'cosine'"),
    ("training.precision=bf16", "training.precision: 'fp32' -> 'bf16'"),
    ("data.prefix=rewrite: ", "data.prefix: '' -> 'rewrite: '"),
    ("teacher.arch.dropout=0.3", "teacher.arch.dropout: 0.1 -> 0.3"),
])
def test_a_resume_refuses_other_changes_by_name(finished, tmp_path, capsys, override, named):
    cfg, _ = finished
    out = only_step3(finished, tmp_path / "run")
    before = snapshot(out)
    assert teacher(cfg, out, "--resume_from_checkpoint", "auto", "--set", override) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"a resume cannot change {named}" in err and "a resume may change training.teacher.{learning_rate" in err
    assert changes(out, before, snapshot(out)) == []


# --------------------------------------------------------------------------- 3. the NaN stop
def test_a_nan_stop_saves_nothing_and_points_at_the_last_good_checkpoint(finished, tmp_path, capsys):
    cfg, _ = finished
    out = only_step3(finished, tmp_path / "run")
    assert teacher(cfg, out, "--resume_from_checkpoint", "auto", "--set", "training.teacher.learning_rate=1e6",
                   "--set", "training.teacher.eval_every=1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    good = out / STEP3
    assert "at step 4 the validation loss is nan; lower training.teacher.learning_rate" in err
    assert f"--resume_from_checkpoint {good} --set training.teacher.learning_rate=" in err
    assert sorted(p.name for p in (out / "checkpoints/teacher").iterdir()) == [good.name]  # no NaN checkpoint, no best.pt
    assert teacher(cfg, out, "--resume_from_checkpoint", str(good), "--set", "training.teacher.learning_rate=1e-4") == 0
    summary = json.loads((out / "teacher/training_summary.json").read_text())
    assert summary["steps"] == 6 and all(v["loss"] == v["loss"] for v in summary["validation"])


def test_non_finite_weights_are_never_checkpointed_nor_selected(tmp_path):
    from test_training import make_trainer
    from utils.errors import UserError
    trainer, _ = make_trainer(tmp_path)
    trainer.job.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    trainer.state.step = 2
    good = trainer.save_checkpoint()
    trainer._track_best({"loss": float("nan")})
    assert trainer.state.best_step is None and not (trainer.job.checkpoint_dir / "best.pt").exists()
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = float("inf")
    trainer.state.step = 3
    with pytest.raises(UserError, match=f"at step 3 the weights are no longer finite.*{good.name}"):
        trainer.save_checkpoint()
    with pytest.raises(UserError, match="at step 3 the (validation loss is nan|weights are no longer finite)"):
        trainer.validate()
    assert sorted(p.name for p in trainer.job.checkpoint_dir.iterdir()) == [good.name]


# --------------------------------------------------------------------------- 6. a full disk at export
def test_a_full_disk_at_export_is_one_line_and_leaves_no_tmp(finished, tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedModel
    cfg, _ = finished
    out = tmp_path / "run"

    def full(self, path, **kw):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    assert teacher(cfg, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot export the model to") and "No space left on device" in err
    assert "--resume_from_checkpoint auto" in err and "\n" not in err
    assert not (out / "teacher/final.tmp").exists() and not (out / "teacher/final").exists()
    assert (out / "checkpoints/teacher/step_00000006.pt").is_file()
    monkeypatch.undo()
    assert teacher(cfg, out, "--resume_from_checkpoint", "auto") == 0
    assert (out / "teacher/final/model.safetensors").is_file()


# --------------------------------------------------------------------------- 7. the printed resume command
def test_the_resume_command_is_the_launched_one():
    argv = ["--mode", "train_teacher", "--config", "c.yaml", "--overwrite", "--resume_from_checkpoint=x.pt"]
    assert resume_command(argv, ["/usr/bin/python3", "/opt/kd/main.py"]) == \
        "/usr/bin/python3 /opt/kd/main.py --mode train_teacher --config c.yaml --resume_from_checkpoint auto"
    assert resume_command(["--config", "my config.yaml"], ["python", "-X", "dev", "main.py"]) == \
        "python -X dev main.py --config 'my config.yaml' --resume_from_checkpoint auto"


def test_full_pipeline_overwrite_replaces_both_models_only_once_both_are_trained(tmp_path, capsys):
    from test_bad_input import base_config
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(base_config()))
    out = tmp_path / "run"
    pipeline = ["--config", str(cfg), "--output_dir", str(out)]
    assert main(pipeline) == 0
    keep = ["teacher", "student", "checkpoints", "config.resolved.json", "benchmark_results.json",
            "predictions_student.jsonl"]
    before = {k: snapshot(out / k) for k in keep}
    # the new teacher trains, the new student fails: nothing of the earlier run changes
    assert main([*pipeline, "--overwrite", "--set", "training.seed=7", "--set", "training.student.learning_rate=1e6",
                 "--set", "training.student.eval_every=1"]) == 2
    assert "student: at step 1 the validation loss is nan" in capsys.readouterr().err
    for k in keep:
        assert [c for c in changes(out / k, before[k], snapshot(out / k)) if ".new" not in c] == []
    assert (out / "teacher.new/final/model.safetensors").is_file()
    old_teacher = weights(out / "teacher/final")["model.shared.weight"]
    # continuing it keeps the new teacher, trains the student, then replaces both and the reports
    assert main([*pipeline, "--set", "training.seed=7", "--resume_from_checkpoint", "auto"]) == 0
    assert not [p.name for p in out.rglob("*.new")]
    assert not torch.equal(weights(out / "teacher/final")["model.shared.weight"], old_teacher)
    assert json.loads((out / "config.resolved.json").read_text())["training"]["seed"] == 7
    results = json.loads((out / "benchmark_results.json").read_text())
    assert {m["name"]: m["path"] for m in results["models"]} == {"teacher": str(out / "teacher/final"),
                                                                 "student": str(out / "student/final")}
    assert changes(out / "benchmark_results.json", before["benchmark_results.json"],
                   snapshot(out / "benchmark_results.json"))
