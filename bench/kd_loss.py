"""The distillation loss alone, side by side: ours against Liger-Kernel's compiled chunked loss.

    bench/.venv/bin/python bench/kd_loss.py                       # every shape and loss; ~6 min
    bench/.venv/bin/python bench/kd_loss.py --shapes v2k --losses skew_kl --rounds 4

A whole step (bench/kd_step.py) is mostly the models; where the vocabulary is small (V = 2,000) the
loss is a few percent of it and step-to-step noise hides any difference. Here each implementation
computes only ``0.5 * CE + 0.5 * loss`` (mean over N target positions) and its backward from fixed
decoder states and LM-head weights, as both get them inside a step: ours through
``fused_logit_objective`` with the teacher's logits made chunk by chunk (``DenseTargets``), Liger
through ``LigerFusedLinearJSDLoss`` under ``torch.compile`` at the beta of the same loss (0 forward
KL, 1 reverse KL, 0.5 JSD; for the losses it does not have, its forward KL). First every loss's value
and gradients are checked: ours against our unchunked path, and against Liger where Liger has the
loss (float32, relative 1e-4). Then each implementation runs in its own process, ``--rounds``
processes each, round-robin, each round starting one implementation later: ``--warmup`` calls, then
``--repeats`` timed ones, and the extra resident memory (as in kd_step.py).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kd_step import ROOT, cpu_name, rss_mb

# name -> (N target positions, student d, teacher d, V): the target positions of kd_step.py's shapes
SHAPES = {"v2k": (410, 128, 256, 2000), "v32k": (410, 128, 256, 32128), "v32k-b64": (3277, 128, 256, 32128),
          "t5": (307, 512, 768, 32128)}
LOSSES = ("vanilla_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl")
LIGER_BETA = {"vanilla_kl": 0.0, "reverse_kl": 1.0, "jsd": 0.5}   # the rest are compared with its forward KL


def tensors(shape: str, seed: int = 0):
    """Student states (requires grad), student head weight (requires grad), teacher states and weight,
    labels: logits of standard deviation ~2, the teacher's correlated with the student's."""
    import torch
    n, d_s, d_t, v = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d_s, generator=g)
    w = torch.randn(v, d_s, generator=g) * 2 * d_s ** -0.5
    h_t = torch.cat([h, torch.randn(n, d_t - d_s, generator=g)], -1)
    w_t = torch.cat([w, torch.randn(v, d_t - d_s, generator=g) * 2 * d_t ** -0.5], -1)
    labels = torch.randint(0, v, (n,), generator=g)
    return h.requires_grad_(), w.requires_grad_(), h_t, w_t, labels


def loss_fn(impl: str, loss: str, chunk_size=None):
    """``(h, w, h_t, w_t, labels) -> scalar`` for ``impl`` in ("ours", "liger_compiled")."""
    import torch
    if impl == "liger_compiled":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
        fused = LigerFusedLinearJSDLoss(weight_hard_loss=0.5, weight_soft_loss=0.5, beta=LIGER_BETA.get(loss, 0.0),
                                        compiled=True)
        return lambda h, w, h_t, w_t, labels: fused(h, w, h_t, w_t, labels)
    from distiller_zoo import build_loss
    from distiller_zoo.fused import fused_logit_objective
    from distiller_zoo.heads import LMHead
    from distiller_zoo.teacher import DenseTargets
    kd = build_loss(loss, {})

    def ours(h, w, h_t, w_t, labels):
        teacher = DenseTargets(h_t, LMHead(w_t, None))
        total, _ = fused_logit_objective(h, LMHead(w, None), labels, teacher, 0.5, [kd], [0.5], chunk_size)
        return total / len(labels)
    return ours


def value_and_grads(fn, shape: str):
    import torch
    h, w, h_t, w_t, labels = tensors(shape)
    value = fn(h, w, h_t, w_t, labels)
    return float(value.detach()), torch.autograd.grad(value, (h, w))


def check(shape: str, losses) -> None:
    """Every loss: ours (chunked) = ours unchunked, and = Liger where Liger has the loss."""
    import torch

    def rel(a, b):
        return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))
    torch._dynamo.reset()   # Liger recompiles per shape and beta: past dynamo's limit it would run eager
    for loss in losses:
        v, g = value_and_grads(loss_fn("ours", loss), shape)
        refs = [("ours unchunked", loss_fn("ours", loss, 0))]
        refs += [("liger", loss_fn("liger_compiled", loss))] if loss in LIGER_BETA else []
        for name, fn in refs:
            v_ref, g_ref = value_and_grads(fn, shape)
            worst = rel(g, g_ref)
            ok = abs(v - v_ref) <= 1e-4 * abs(v_ref) and worst <= 1e-4
            print(f"  check {loss:16s} vs {name:15s} loss {v:.6f} ({v_ref:.6f}), worst relative gradient "
                  f"difference {worst:.1e}: {'ok' if ok else 'MISMATCH'}")
            if not ok:
                raise SystemExit(f"{loss}: ours and {name} disagree; nothing timed")


def worker(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    fn = loss_fn(a.impl, a.loss)
    h, w, h_t, w_t, labels = tensors(a.shape)

    def call():
        torch.autograd.grad(fn(h, w, h_t, w_t, labels), (h, w))
    for _ in range(a.warmup):
        call()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    base, times = rss_mb("VmRSS"), []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"times": times, "extra_mb": rss_mb("VmHWM") - base}


def run_worker(impl: str, loss: str, shape: str, a) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--loss", loss, "--shapes", shape, "--repeats",
           str(a.repeats), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{impl} {loss} {shape} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(shape: str, losses, a) -> dict:
    """``{(impl, loss): {"times": [...], "extra_mb": peak}}`` over ``a.rounds`` rotated rounds."""
    jobs = [("liger_compiled", x) for x in dict.fromkeys(x if x in LIGER_BETA else "vanilla_kl" for x in losses)]
    jobs += [("ours", x) for x in losses]
    rows: dict = {}
    for k in range(a.rounds):
        for job in jobs[k % len(jobs):] + jobs[:k % len(jobs)]:
            r = run_worker(*job, shape, a)
            row = rows.setdefault(job, {"times": [], "extra_mb": 0.0})
            row["times"] += r["times"]
            row["extra_mb"] = max(row["extra_mb"], r["extra_mb"])
    return rows


def print_table(shape: str, rows: dict, losses) -> None:
    n, d_s, d_t, v = SHAPES[shape]
    print(f"\n{shape}: N={n} positions, student d={d_s}, teacher d={d_t}, V={v}; loss + backward, "
          f"median [min-max] ms, extra MB")
    med = {job: statistics.median(r["times"]) * 1e3 for job, r in rows.items()}
    for (impl, loss), r in rows.items():
        print(f"  {impl:15s} {loss:16s} {med[impl, loss]:8.2f} [{min(r['times']) * 1e3:7.2f}-"
              f"{max(r['times']) * 1e3:7.2f}] {r['extra_mb']:7.0f} MB")
    print("  ours / Liger compiled (the same loss where Liger has it, else its forward KL): time, memory")
    for loss in losses:
        ref = ("liger_compiled", loss if loss in LIGER_BETA else "vanilla_kl")
        mem = rows["ours", loss]["extra_mb"] / max(rows[ref]["extra_mb"], 1.0)
        print(f"    {loss:16s} {med['ours', loss] / med[ref]:5.2f}x time, {mem:5.2f}x memory "
              f"({rows['ours', loss]['extra_mb']:.0f} / {rows[ref]['extra_mb']:.0f} MB)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--loss", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.impl, a.shape = a.worker, a.shapes
        print(json.dumps(worker(a)))
        return 0
    import torch
    torch.set_num_threads(a.threads)
    losses = a.losses.split(",")
    print(f"machine: {platform.machine()} {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}, "
          f"torch {torch.__version__}, {a.threads} threads; load average at start {os.getloadavg()[0]:.2f}")
    for shape in a.shapes.split(","):
        print(f"gradient check, {shape}:")
        check(shape, losses)
        print_table(shape, measure(shape, losses, a), losses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
