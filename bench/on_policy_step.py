"""What on-policy distillation costs: one optimizer step of each kind, each kind in its own process.

    python bench/on_policy_step.py --teacher_path runs/study_paradetox/teacher/teacher/final \
        [--student_path runs/study_paradetox/runs/vanilla_kd_seed0/student/final] [--steps 30]
    python bench/on_policy_step.py --config configs/studies/synthetic_base.yaml --teacher_path ... --student_path ...

At a study's shapes (default configs/studies/paradetox_base.yaml: the student is the teacher shrunk
and narrowed, batch 64, targets up to 64 tokens), the trainer's own ``train_step`` on the study's
data order, for:

- ``off_policy``: the base config's objective (0.5 CE + 0.5 KL at T = 2) on the references;
- ``on_0.5_replay``: half the micro-batches on the student's samples (JSD, beta 0.5), a replay
  buffer of 1,024 samples refreshed with p = 0.25 (DistiLLM);
- ``on_1.0``: every micro-batch on fresh samples (GKD at lambda 1).

Each kind runs ``--warmup`` steps, then ``--steps`` timed ones (median, min-max; the on-policy
steps' generation share too). The sampled lengths depend on the student: a trained one
(``--student_path``) stops where its outputs stop, the initial shrunk one may run to the limit.
The goal of issue 26: ``on_0.5_replay`` within 2x of ``off_policy``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = ROOT / "configs" / "studies" / "paradetox_base.yaml"
JSD = "[{name: jsd, weight: 1.0, beta: 0.5}]"
KINDS = {
    "off_policy": [],
    "on_0.5_replay": [f"distill.on_policy={{fraction: 0.5, losses: {JSD}, replay: {{size: SIZE, refresh: 0.25}}}}"],
    "on_1.0": [f"distill.on_policy={{fraction: 1.0, losses: {JSD}}}"],
}


def trainer_for(base: str, overrides: list[str], teacher_path: str, student_path: str | None, out: Path):
    """The student's Trainer exactly as distill_student builds it (run_stage intercepted before training)."""
    import pipeline
    import pipeline.modes
    from settings import load_config
    sets = [("--set", s) for s in overrides + [f"training.output_dir={out}", "training.baseline=false",
                                               "training.num_threads=2"]]
    if student_path:
        sets += [("--set", "student.init=pretrained"), ("--set", f"student.name_or_path={student_path}"),
                 ("--set", "student.tokenizer.train=null")]
    cfg = load_config(base, sets)
    # the step on the references: no pseudo-labels to decode first, so no transfer set either
    cfg.distill.pseudo_labels, cfg.data.unlabeled_file = None, None
    if cfg.data.synthetic is not None:
        cfg.data.synthetic.unlabeled_examples = 0
    captured = {}
    pipeline.modes.run_stage = lambda run, stage, trainer: captured.setdefault("trainer", trainer)
    pipeline.distill_student(cfg, pipeline.RunOptions(teacher_path=teacher_path))
    return captured["trainer"]


def time_kind(kind: str, args) -> dict:
    from utils.logs import setup_logging
    setup_logging()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [o.replace("SIZE", str(args.replay_size)) for o in KINDS[kind]]
        trainer = trainer_for(args.config, overrides, args.teacher_path, args.student_path, Path(tmp))
        trainer.model.train()
        times, gen = [], []
        for i in range(args.warmup + args.steps):
            window = trainer.window_batches(trainer.state.epoch, trainer.state.window)
            t0 = time.perf_counter()
            record = trainer.train_step(window)
            elapsed = time.perf_counter() - t0
            trainer._advance()
            if i >= args.warmup:
                times.append(elapsed)
                gen.append(record.get("op_gen_s", 0.0))
    return {"kind": kind, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "generation_share": sum(gen) / sum(times), "steps": args.steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(BASE), help="the study's base config (default: ParaDetox's)")
    p.add_argument("--teacher_path", required=True)
    p.add_argument("--student_path")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--replay_size", type=int, default=1024, help="replay buffer (at most the training sources)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--kind", choices=list(KINDS), help=argparse.SUPPRESS)  # the child process's one kind
    args = p.parse_args()
    if args.kind:
        print(json.dumps(time_kind(args.kind, args)))
        return
    results = {}
    for kind in KINDS:  # each kind alone, in a fresh process
        cmd = [sys.executable, __file__, "--kind", kind, "--config", args.config, "--teacher_path", args.teacher_path,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--replay_size", str(args.replay_size)]
        cmd += ["--student_path", args.student_path] if args.student_path else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[kind] = json.loads(out)
    base = results["off_policy"]["median_s"]
    print(f"# {_cpu()}, CPU fp32, {Path(args.config).name}; student: {args.student_path or 'as the config builds it'}; "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{'kind':<16}{'median s':>10}{'min-max s':>16}{'generation':>12}{'vs off-policy':>15}")
    for kind, r in results.items():
        print(f"{kind:<16}{r['median_s']:>10.3f}{r['min_s']:>8.3f}-{r['max_s']:<7.3f}{r['generation_share']:>11.0%}"
              f"{r['median_s'] / base:>14.2f}x")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
