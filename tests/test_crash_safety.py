"""Signals, kill -9, corrupt checkpoints and a full disk: no work is lost and resumes are exact."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
import torch

from checkpoints import latest_checkpoint, load_checkpoint_file
from conftest import ROOT
from main import main, resume_command
from utils.errors import UserError

LONG = {"max_steps": 300, "eval_every": 20, "log_every": 1, "save_total_limit": 3, "batch_size": 4}


OFFLINE_ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def train_command(cfg_path, out) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "--mode", "train_teacher", "--config", str(cfg_path),
            "--output_dir", str(out)]


def start_training(cfg_path, out, cwd=None):
    return subprocess.Popen(train_command(cfg_path, out), env=OFFLINE_ENV, stderr=subprocess.PIPE, text=True, cwd=cwd)


def wait_for(condition, proc, timeout=300):
    """Poll until ``condition()``; ``timeout`` only guards against a hang (a loaded CI machine is slow)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"hung: no progress in {timeout} s"
        time.sleep(0.05)


def last_weights(out):
    ckpt = load_checkpoint_file(latest_checkpoint(out / "checkpoints" / "teacher"))
    return ckpt["state"]["step"], ckpt["weights"]["model"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run, launched as the interrupted ones are (a fresh process: nothing
    earlier tests did to this one's torch state can reach it). One thread: MKL's matmuls may split
    their sums differently when the thread count they get changes, and the comparison is bitwise."""
    from conftest import TINY_CONFIG
    tmp = tmp_path_factory.mktemp("straight")
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["training"]["teacher"].update(LONG)
    cfg["training"]["num_threads"] = 1
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg))
    proc = start_training(path, tmp / "run")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    Straight = namedtuple("Straight", "config weights")
    return Straight(path, last_weights(tmp / "run")[1])


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sigterm_finishes_the_step_saves_and_resumes_exactly(straight, tmp_path):
    """Launched as ``python /path/to/main.py`` from another directory with relative paths: the
    printed resume command works there verbatim."""
    out = tmp_path / "run"
    shutil.copy(straight.config, tmp_path / "config.json")
    proc = start_training("config.json", "run", cwd=tmp_path)
    metrics = out / "teacher" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 30, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)  # a hang guard: the step, the checkpoint and the exit
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    command = f"{shlex.join([sys.executable, str(ROOT / 'main.py')])} --mode train_teacher --config config.json " \
              f"--output_dir run --resume_from_checkpoint auto"
    assert "stopped by SIGTERM after step" in last and last.endswith(f"Resume with: {command}")
    assert "Traceback" not in err
    step, _ = last_weights(out)
    assert 30 <= step < 300 and f"after step {step};" in last  # the checkpoint is at the step it stopped
    done = subprocess.run(shlex.split(command), cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_weights(last_weights(out)[1], straight.weights)
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if "loss" in json.loads(x)]
    assert steps == list(range(1, 301))


def test_kill_9_mid_checkpoint_write_resumes_from_the_previous_one(straight, tmp_path):
    out = tmp_path / "run"
    ckpts = out / "checkpoints" / "teacher"
    proc = start_training(straight.config, out)
    wait_for(lambda: ckpts.is_dir() and len(list(ckpts.glob("step_*.pt"))) >= 2, proc)
    proc.kill()
    proc.wait(timeout=30)
    good = latest_checkpoint(ckpts)
    # what a kill during a write leaves: a partial temporary file (atomic rename never happened) ...
    (ckpts / "step_99999990.pt.tmp").write_bytes(good.read_bytes()[:5000])
    # ... and, had the write not been atomic, a truncated newest checkpoint: 'auto' passes over it
    (ckpts / "step_99999991.pt").write_bytes(good.read_bytes()[:5000])
    assert latest_checkpoint(ckpts) == good
    (ckpts / "step_99999991.pt").unlink()
    done = subprocess.run(train_command(straight.config, out) + ["--resume_from_checkpoint", "auto"],
                          env=OFFLINE_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_weights(last_weights(out)[1], straight.weights)


def test_resume_command_drops_overwrite_and_old_resume_flags():
    assert resume_command(["--mode", "distill_student", "--config", "c.yaml", "--overwrite",
                           "--resume_from_checkpoint", "x.pt"]) == \
        "python main.py --mode distill_student --config c.yaml --resume_from_checkpoint auto"


def test_a_full_disk_stops_before_writing_and_keeps_earlier_checkpoints(tiny_config_dict, write_config, tmp_path,
                                                                        monkeypatch, capsys):
    tiny_config_dict["training"]["teacher"].update(max_steps=6, eval_every=3)
    cfg = str(write_config(tiny_config_dict))
    out = tmp_path / "run"
    real = shutil.disk_usage
    calls = []

    def disk_usage(path):
        calls.append(path)
        usage = real(path)
        # room for the first checkpoint, then the disk is "full"
        return usage._replace(free=usage.free if len(calls) <= 2 else 1000)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    assert main(["--mode", "train_teacher", "--config", cfg, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not enough disk space for a checkpoint" in err and "MB free" in err
    assert [p.name for p in sorted((out / "checkpoints/teacher").glob("*"))] == ["best.pt", "step_00000003.pt"]
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert main(["--mode", "train_teacher", "--config", cfg, "--output_dir", str(out),
                 "--resume_from_checkpoint", "auto"]) == 0


def test_another_architecture_is_refused_saying_what_differs(tiny_config_dict, write_config, tmp_path, capsys):
    cfg = str(write_config(tiny_config_dict))
    out = tmp_path / "run"
    assert main(["--mode", "train_teacher", "--config", cfg, "--output_dir", str(out)]) == 0
    ckpt = latest_checkpoint(out / "checkpoints/teacher")
    capsys.readouterr()
    code = main(["--mode", "train_teacher", "--config", cfg, "--output_dir", str(tmp_path / "b"),
                 "--resume_from_checkpoint", str(ckpt), "--set", "teacher.arch.d_model=64"])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines are the run's log
    # refused before a model is built: the checkpoint's config names what differs
    assert last.startswith("error: checkpoint") and "cannot change teacher.arch.d_model: 48 -> 64" in last
    assert not (tmp_path / "b").exists()


def test_checkpoints_never_hold_the_teacher_and_load_without_code(tiny_config_dict, write_config, tmp_path):
    cfg = str(write_config(tiny_config_dict))
    out = tmp_path / "run"
    assert main(["--config", cfg, "--output_dir", str(out)]) == 0
    ckpt = load_checkpoint_file(latest_checkpoint(out / "checkpoints/student"))  # weights_only=True inside
    assert set(ckpt["weights"]) == {"model"}
    teacher_keys = set(load_checkpoint_file(latest_checkpoint(out / "checkpoints/teacher"))["weights"]["model"])
    student = ckpt["weights"]["model"]
    assert all(student[k].shape[-1] != 48 for k in student if k.endswith("q_proj.weight"))  # student width
    assert {"optimizer", "scheduler", "scaler", "rng", "state", "config", "total_steps"} <= set(ckpt)
    assert teacher_keys  # the teacher's checkpoints live apart, under checkpoints/teacher
    with pytest.raises(UserError, match="not a checkpoint written by this tool"):
        torch.save([1, 2], tmp_path / "list.pt")
        load_checkpoint_file(tmp_path / "list.pt")
