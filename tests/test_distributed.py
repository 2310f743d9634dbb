"""torchrun: two CPU processes (gloo) against one process with the same global batch.

Each torchrun launch starts two interpreters (about 10-20 s on a small CPU), so the runs are
module fixtures shared by the tests that inspect them.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_CONFIG, TINY_OPTIM
from main import main
from utils import distributed as dist
from utils.errors import UserError

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available in this build of torch")

STEPS = 5  # 96 pairs / global batch 16 = 6 micro-batches = 3 windows of 2: step 4 starts epoch 1
BATCH, ACCUMULATION = 16, 2  # one process; two ranks take 8 each

# ---- how far two float32 runs of the same steps may drift when only the summation order differs
# (one process with batch 16 against two ranks of 8 and a gloo all-reduce, or another CPU's kernels).
# The longest sum of a step is a weight's gradient over every token of the global batch:
N_TERMS = BATCH * ACCUMULATION * max(TINY_CONFIG["data"]["max_source_length"],
                                     TINY_CONFIG["data"]["max_target_length"])
EPS32 = torch.finfo(torch.float32).eps
# A sum of N terms in any order is within N*eps32*sum|terms| of the exact one (Higham's gamma_N):
# N*eps32*KAPPA relative, KAPPA allowing a gradient element 10x smaller than the sum of its terms'
# magnitudes (cancellation) and the drift a step carries into the next steps' gradients.
KAPPA = 10
LR = TINY_OPTIM["learning_rate"]
LOG_QUANTUM = 1e-6  # metrics.jsonl rounds to 6 decimals: values a rounding apart can log one unit apart


def weight_atol(steps: int) -> float:
    """Bound on |w_a - w_b| after ``steps`` AdamW steps of the two summation orders.

    AdamW's step lr_t * m/(sqrt(v)+eps) ignores the gradient's scale, so a relative gradient error r
    moves it by at most r * |m/sqrt(v)| <= r * sqrt(t) at step t (Cauchy-Schwarz over the t averaged
    gradients); summed over the linear schedule lr_t = LR * (STEPS - t + 1) / STEPS. Here ~2e-5 at
    step 5 (1.1e-6 measured on two CPUs); a bug that desynchronises the ranks moves weights by ~LR
    per step (1e-2 measured), three orders of magnitude above.
    """
    steps_sum = sum(LR * (STEPS - t + 1) / STEPS * math.sqrt(t) for t in range(1, steps + 1))
    return steps_sum * N_TERMS * EPS32 * KAPPA


def loss_tolerance(value: float) -> float:
    """A logged loss is a mean of at most N_TERMS non-negative per-token terms (no cancellation):
    any summation order is within N*eps32 relative (~1.5e-4), plus the log's rounding. A loss not
    reduced over the ranks, or averaged per rank instead of per token, is off by percents."""
    return N_TERMS * EPS32 * abs(value) + LOG_QUANTUM


def config(tmp: Path, **student) -> Path:
    c = copy.deepcopy(TINY_CONFIG)
    for role in ("teacher", "student"):
        c[role]["arch"]["dropout"] = 0.0  # dropout masks differ per rank: equality needs none
    c["training"]["num_threads"] = 1
    c["training"]["student"].update(max_steps=STEPS, gradient_accumulation_steps=ACCUMULATION, eval_every=3,
                                    log_every=1, batch_size=BATCH, **student)
    # hidden_mse: a trainable projection (student d_model 32 -> teacher 48) synchronised with the student
    c["distill"]["losses"].append({"name": "hidden_mse", "weight": 0.3, "layers": "last"})
    c["benchmark"].update(metrics=["rouge"], bootstrap_samples=0, latency_samples=0, baselines=["untrained_student"],
                          max_samples=11)
    path = tmp / f"config{len(list(tmp.glob('config*.json')))}.json"
    path.write_text(json.dumps(c))
    return path


def torchrun(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 main.py ARGS`` (a free rendezvous port per launch)."""
    return subprocess.run(torchrun_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def torchrun_command(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(ROOT / "main.py"), *map(str, args)]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path, steps: int) -> None:
    """The same weights up to float32 summation order (see weight_atol)."""
    atol = weight_atol(steps)
    assert atol < LR / 100  # far below one step of AdamW (~LR per weight): a desynchronised rank still fails
    wa, wb = weights(a)["weights"], weights(b)["weights"]
    assert wa.keys() == wb.keys() == {"model", "objective"}
    for part in wa:
        assert wa[part].keys() == wb[part].keys()
        for k in wa[part]:
            torch.testing.assert_close(wa[part][k], wb[part][k], rtol=0, atol=atol, msg=f"{part}.{k}")


def distill(out: Path, cfg: Path, *extra) -> list[str]:
    return ["--mode", "distill_student", "--config", cfg, "--output_dir", out, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained teacher, then the same distillation by one process (batch 16) and by two (2 x 8)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = config(tmp)
    teacher = tmp / "teacher_run"
    assert main(["--mode", "train_teacher", "--config", str(cfg), "--output_dir", str(teacher)]) == 0
    one, two = tmp / "one", tmp / "two"
    for d in (one, two):
        shutil.copytree(teacher, d)
    assert main(list(map(str, distill(one, cfg)))) == 0
    proc = torchrun(*distill(two, cfg, "--set", "training.student.batch_size=8"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tmp": tmp, "cfg": cfg, "one": one, "two": two, "proc": proc}


def test_two_ranks_take_the_steps_of_one_process_with_the_global_batch(runs):
    for step in (3, STEPS):
        name = f"checkpoints/student/step_{step:08d}.pt"
        assert_same_weights(runs["one"] / name, runs["two"] / name, step)
    # the logged (global) losses agree too: every rank's token counts and sums are all-reduced
    read = lambda d: [json.loads(line) for line in (d / "student/metrics.jsonl").read_text().splitlines()]
    one, two = read(runs["one"]), read(runs["two"])
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 3, 4, 5, 5]
    for a, b in zip(one, two):
        for k in ("loss", "ce", "vanilla_kl", "hidden_mse"):
            if k in a:
                assert abs(b[k] - a[k]) <= loss_tolerance(a[k]), (a["step"], k, a[k], b[k])
    assert "batch 8 x 2 ranks x accumulation 2" in runs["proc"].stdout


def test_rank_zero_alone_writes_one_copy_of_every_line_and_file(runs):
    proc, two = runs["proc"], runs["two"]
    log = (two / "logs/run.log").read_text()
    for step in range(1, STEPS + 1):
        assert log.count(f"student step {step}/{STEPS} ") == 1
        assert proc.stdout.count(f"student step {step}/{STEPS} ") == 1
    assert log.count("student checkpoint saved") == 2 and log.count("student exported to") == 1
    assert "[rank 1]" not in proc.stdout + log  # the other rank logs warnings and errors only
    ckpts = sorted(p.name for p in (two / "checkpoints/student").iterdir())
    assert ckpts == ["best.pt", "step_00000003.pt", "step_00000005.pt"]
    leftovers = [p for p in two.rglob("*") if ".tmp" in p.name or p.name.startswith(".write_test")]
    assert not leftovers
    assert (two / "student/final/model.safetensors").is_file()


def test_each_rank_keeps_its_own_rng_state_in_the_checkpoint(runs):
    ckpt = weights(runs["two"] / f"checkpoints/student/step_{STEPS:08d}.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])  # own dropout streams
    assert torch.equal(ckpt["rng"]["torch"], ckpt["rng_ranks"][0]["torch"])  # the single-process key: rank 0's
    one = weights(runs["one"] / f"checkpoints/student/step_{STEPS:08d}.pt")
    assert one["world_size"] == 1 and len(one["rng_ranks"]) == 1


def interrupted_copy(src: Path, dst: Path) -> Path:
    """``src`` as a run stopped after step 3: later checkpoints, the export and later records gone."""
    shutil.copytree(src, dst)
    (dst / f"checkpoints/student/step_{STEPS:08d}.pt").unlink()
    shutil.rmtree(dst / "student/final")
    return dst


def test_a_two_rank_run_continues_exactly_with_one_process(runs):
    r21 = interrupted_copy(runs["two"], runs["tmp"] / "r21")
    assert main(list(map(str, distill(r21, runs["cfg"], "--resume_from_checkpoint", "auto")))) == 0
    name = f"checkpoints/student/step_{STEPS:08d}.pt"
    assert_same_weights(runs["one"] / name, r21 / name, STEPS)


def test_a_one_process_run_continues_exactly_with_two_ranks(runs):
    r12 = interrupted_copy(runs["one"], runs["tmp"] / "r12")
    proc = torchrun(*distill(r12, runs["cfg"], "--set", "training.student.batch_size=8",
                             "--resume_from_checkpoint", "auto"), cwd=runs["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("resumed from") == 1
    name = f"checkpoints/student/step_{STEPS:08d}.pt"
    assert_same_weights(runs["one"] / name, r12 / name, STEPS)


def test_a_resume_that_would_change_the_global_batch_is_refused(runs, capsys):
    r = interrupted_copy(runs["two"], runs["tmp"] / "refused")
    code = main(list(map(str, distill(r, runs["cfg"], "--set", "training.student.batch_size=8",
                                      "--resume_from_checkpoint", "auto"))))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "2 rank(s) x batch_size 8 = 16" in err and "--set training.student.batch_size=16" in err


def test_sigterm_to_one_rank_stops_both_after_a_common_step(runs):
    """With pseudo-labels and a teacher cache, built once by rank 0 and read by rank 1."""
    tmp = runs["tmp"]
    c = json.loads(runs["cfg"].read_text())
    c["training"]["student"].update(max_steps=400, eval_every=1000, gradient_accumulation_steps=1)
    c["distill"] = {"ce_weight": 0.5, "losses": [{"name": "vanilla_kl", "weight": 0.5}],
                    "teacher_cache": {"top_k": 8}, "pseudo_labels": {"targets": "both", "max_new_tokens": 8}}
    (tmp / "stop.json").write_text(json.dumps(c))
    out = tmp / "stopped"
    shutil.copytree(runs["two"] / "teacher", out / "teacher")
    command = torchrun_command(*distill(out, tmp / "stop.json", "--set", "training.student.batch_size=8"))
    proc = subprocess.Popen(command, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = []
    try:
        for line in proc.stdout:  # rank 0's progress lines
            head.append(line)
            if "student step 2/" in line:
                break
        os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)  # one rank only
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # torchrun lists the failed ranks it observed; once one rank has exited it may stop watching the
    # other, so the listing is racy. Every rank it lists stopped cleanly (143), none crashed:
    codes = re.findall(r"^\s*exitcode\s*:\s*(\d+)", stderr, re.M)
    assert codes and set(codes) == {"143"}, stderr[-2000:]
    stops = re.findall(r"stopped by SIGTERM after step (\d+); checkpoint saved: (\S+)\.", stderr)
    assert len(stops) == 1, stderr[-2000:]  # rank 0 prints how to resume
    step = int(stops[0][0])
    assert [p.name for p in (out / "checkpoints/student").iterdir()] == [f"step_{step:08d}.pt"]
    assert "Resume with the same torchrun command" in stderr
    stdout = "".join(head) + stdout  # (the run's log file starts after the cache and the labels are built)
    assert stdout.count("teacher cache: building") == 1 and stdout.count("pseudo-labels: shard 1/1") == 1
    assert len(list((out / "teacher_cache").iterdir())) == 1 and len(list((out / "pseudo_labels").iterdir())) == 1
    assert "[rank 1] SIGTERM received" in stdout


def rank_pid(torchrun_pid: int, rank: int, wait: float = 30) -> int:
    """The pid of torchrun's worker with RANK=``rank`` (found through /proc)."""
    deadline = time.time() + wait
    while time.time() < deadline:
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                env = (p / "environ").read_bytes().split(b"\0")
                status = (p / "status").read_text()
            except OSError:
                continue
            ppid = int(re.search(r"PPid:\s*(\d+)", status).group(1))
            if f"RANK={rank}".encode() in env and ppid != 1 and _descends(ppid, torchrun_pid):
                return int(p.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under pid {torchrun_pid}")


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(re.search(r"PPid:\s*(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
        except OSError:
            return False
    return False


def test_a_benchmark_under_two_ranks_scores_each_example_once(runs):
    """11 examples over 2 ranks (6 + 5): gathered in order, scored once, as one process scores them."""
    tmp, student = runs["tmp"], runs["one"] / "student/final"
    b1, b2 = tmp / "bench1", tmp / "bench2"
    args = lambda out: ["--mode", "benchmark", "--config", runs["cfg"], "--output_dir", out, "--student_path", student]
    assert main(list(map(str, args(b1)))) == 0
    proc = torchrun(*args(b2), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # untrained_student: a model without a directory, which transformers saves on rank 0 only
    for name in ("student", "untrained_student"):
        rows = lambda d: [json.loads(line) for line in (d / f"predictions_{name}.jsonl").read_text().splitlines()]
        assert len(rows(b2)) == 11 and rows(b2) == rows(b1)
    r1, r2 = (json.loads((d / "benchmark_results.json").read_text()) for d in (b1, b2))
    assert r2["num_examples"] == 11 and [m["name"] for m in r2["models"]] == ["student", "untrained_student"]
    for m1, m2 in zip(r1["models"], r2["models"]):
        assert m2["metrics"] == m1["metrics"] and m2["ranks"] == 2 and "ranks" not in m1
    assert not list(b2.glob(".*.tmp"))
    assert proc.stdout.count("benchmark student:") == 1 and proc.stdout.count("benchmark reports written") == 1


# --------------------------------------------------------------------------- without torchrun
def test_without_torchrun_the_helpers_answer_for_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.launched() and not dist.active()
    assert (dist.world_size(), dist.rank(), dist.is_main()) == (1, 0, True)
    assert dist.setup(torch.device("cpu")) == torch.device("cpu") and not dist.active()
    assert dist.sum_all([2.0, 3.5]) == [2.0, 3.5] and dist.all_gather({"a": 1}) == [{"a": 1}]
    assert dist.any_rank(False) is False and dist.any_rank(True) is True
    dist.barrier()
    with dist.main_first():
        pass


def test_world_size_without_the_rest_of_torchrun_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="RANK is not; launch with torchrun"):
        dist.setup(torch.device("cpu"))


@pytest.mark.parametrize("n_items", [0, 1, 5, 11, 16])
@pytest.mark.parametrize("n_ranks", [1, 2, 3, 4])
def test_shards_cover_every_item_once_in_order(n_items, n_ranks):
    items = list(range(n_items))
    shards = [dist.shard(items, r, n_ranks) for r in range(n_ranks)]
    assert [x for s in shards for x in s] == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_sharded_speed_counts_all_sources_over_the_slowest_rank():
    from benchmark.core import sharded_speed
    parts = [{"generation_s": 2.0, "samples_per_s": 3.0, "tokens_per_s": 50.0, "peak_memory_mb": 10.0},
             {"generation_s": 4.0, "samples_per_s": 1.25, "tokens_per_s": 20.0, "peak_memory_mb": 12.0}]
    out = sharded_speed(parts, 11)
    assert out["generation_s"] == 4.0 and out["samples_per_s"] == round(11 / 4.0, 3)
    assert out["tokens_per_s"] == round((2 * 50 + 4 * 20) / 4.0, 1)
    assert out["peak_memory_mb"] == 12.0 and out["ranks"] == 2


def test_under_torchrun_cuda_takes_the_gpu_of_local_rank_and_nccl(monkeypatch):
    """No GPU here: torch.cuda and init_process_group are stood in for, to check what setup asks of them."""
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for var, value in (("RANK", "3"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("set_device", i))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: calls.setdefault("backend", backend))
    monkeypatch.setattr(dist, "rendezvous", lambda env, timeout: None)  # no rank 0 at node0:29500 to meet
    assert dist.setup(torch.device("cuda")) == torch.device("cuda", 1)
    assert calls == {"set_device": 1, "backend": "nccl"}
    calls.clear()
    dist.setup(torch.device("cpu"))
    assert calls == {"backend": "gloo"}
    monkeypatch.setenv("LOCAL_RANK", "2")  # a third process on a node of two GPUs
    with pytest.raises(UserError, match="LOCAL_RANK 2 but this node has 2 GPUs"):
        dist.setup(torch.device("cuda"))
