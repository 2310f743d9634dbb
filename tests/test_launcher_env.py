"""The launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) without torchrun.

Each case runs ``python main.py`` for real: a bad variable is a one-line error (exit 2) before
anything is written; a rank whose partners never come is named after training.rendezvous_timeout,
not after the 60-minute collective timeout.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_CONFIG
from utils import distributed as dist
from utils.errors import UserError

LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available in this build of torch")

HANG_GUARD = 240  # seconds: a bound on a hang under load, not a speed check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp: Path, env: dict, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``python main.py --mode train_teacher`` on the tiny config with ``env`` as the launcher's variables."""
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    out = tmp / "out"
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--mode", "train_teacher", "--config", str(cfg),
                           "--output_dir", str(out), *extra], env={**base, **env}, cwd=tmp, capture_output=True,
                          text=True, timeout=HANG_GUARD)
    return proc, out


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


GOOD = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
BAD = [  # (variables changed from GOOD, the text the error must contain)
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
    ({"RANK": "one"}, "RANK='one' is not an integer"),
    ({"RANK": "2"}, "RANK=2 must be in [0, 1]"),
    ({"RANK": "-1"}, "RANK=-1 must be in [0, 1]"),
    ({"RANK": None}, "WORLD_SIZE is set but RANK is not"),
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not an integer"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 must be in [0, 1]"),
    ({"MASTER_PORT": "http"}, "MASTER_PORT='http' is not an integer"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 must be in [1, 65535]"),
    ({"MASTER_PORT": None}, "WORLD_SIZE is set but MASTER_PORT is not"),
    ({"MASTER_ADDR": None}, "WORLD_SIZE is set but MASTER_ADDR is not"),
    ({"MASTER_ADDR": ""}, "WORLD_SIZE is set but MASTER_ADDR is not"),
]


def with_changes(changes: dict) -> dict:
    env = dict(GOOD, **changes)
    return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize("changes, problem", BAD, ids=[p.split(" ")[0] for _, p in BAD])
def test_a_bad_launcher_variable_is_one_line_before_anything_is_written(tmp_path, changes, problem):
    proc, out = launch(tmp_path, with_changes(changes))
    line = one_error_line(proc)
    assert problem in line and "torchrun --nproc_per_node N main.py" in line
    assert not out.exists()


@pytest.mark.parametrize("changes, problem", BAD, ids=[p.split(" ")[0] for _, p in BAD])
def test_launch_env_names_the_same_problem_in_process(monkeypatch, changes, problem):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in with_changes(changes).items():
        monkeypatch.setenv(var, value)
    with pytest.raises(UserError) as e:
        dist.launch_env()
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_good_variables_are_parsed(monkeypatch):
    for var, value in GOOD.items():
        monkeypatch.setenv(var, value)
    assert dist.launch_env() == dist.LaunchEnv(2, 1, 1, "127.0.0.1", 29511)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: one process, no group
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert dist.launch_env() is None and not dist.launched()
    monkeypatch.setenv("RANK", "1")  # a rank other than 0 of one process: a launcher set up wrongly
    with pytest.raises(UserError, match=r"^RANK=1 must be in \[0, 0\] \(one process"):
        dist.launch_env()


def test_a_rank_zero_alone_names_the_missing_rank_after_the_rendezvous_timeout(tmp_path):
    port = free_port()
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc, _ = launch(tmp_path, env, "--set", "training.rendezvous_timeout=3")
    line = one_error_line(proc)
    assert line.startswith("error: rank 1 of 2 never joined at 127.0.0.1:") and "within 3 s" in line
    assert "training.rendezvous_timeout" in line and "torchrun --nproc_per_node N main.py" in line
    assert f"waiting for rank 1 of 2 to join at 127.0.0.1:{port} (timeout 3 s)" in proc.stderr


def test_a_rank_whose_rank_zero_never_comes_up_stops_in_bounded_time(monkeypatch, capsys):
    """In process: no store server at the port, so rank 1 waits for it, then gives up in one line."""
    env = dist.LaunchEnv(2, 1, 1, "127.0.0.1", free_port())
    with pytest.raises(UserError) as e:
        dist.rendezvous(env, timeout=2)
    assert "rank 0's rendezvous at 127.0.0.1:" in str(e.value) and "never answered within 2 s" in str(e.value)
    assert "\n" not in str(e.value)
    assert "[rank 1] waiting for rank 0's rendezvous" in capsys.readouterr().err


def test_two_ranks_that_both_arrive_pass_the_rendezvous():
    """Rank 0 serves the store here; rank 1 (a thread) joins it: both return a store, nothing is printed."""
    import threading
    port, stores = free_port(), {}
    server = threading.Thread(target=lambda: stores.setdefault(0, dist.rendezvous(
        dist.LaunchEnv(2, 0, 0, "127.0.0.1", port), timeout=60)))
    server.start()
    stores[1] = dist.rendezvous(dist.LaunchEnv(2, 1, 0, "127.0.0.1", port), timeout=60)
    server.join(timeout=HANG_GUARD)
    assert set(stores) == {0, 1}
    assert stores[1].check([f"{dist.ARRIVED}/0", f"{dist.ARRIVED}/1"])


def test_a_taken_port_is_one_line_for_rank_zero():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        with pytest.raises(UserError, match="cannot open the rendezvous on MASTER_PORT=.*choose a free port"):
            dist.rendezvous(dist.LaunchEnv(2, 0, 0, "127.0.0.1", s.getsockname()[1]), timeout=5)


def test_the_rendezvous_timeout_is_validated(tmp_path):
    proc, out = launch(tmp_path, {}, "--set", "training.rendezvous_timeout=0")
    assert "training.rendezvous_timeout: must be in (0, 86400] seconds" in one_error_line(proc)
