"""Command-line entry point: ``python main.py --mode MODE --config FILE``.

Modes are plain functions in :data:`MODES`. ``python main.py`` with no arguments runs the
whole pipeline on the embedded offline demo (configs/demo.json).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

EXAMPLES = """\
modes:
  train_teacher     train (fine-tune) the teacher with cross-entropy
                      python main.py --mode train_teacher --config configs/demo.json
  distill_student   distill the student from a trained teacher
                      python main.py --mode distill_student --config configs/demo.json --teacher_path runs/demo/teacher/final
  benchmark         score and time the teacher and/or the student, write the three reports
                      python main.py --mode benchmark --config configs/demo.json --teacher_path T --student_path S
  full_pipeline     all three in one run directory (the default)
                      python main.py --mode full_pipeline --config configs/demo.json

overrides and inspection:
  python main.py --config configs/demo.json --set training.student.learning_rate=1e-3 --print-config
  python main.py --mode distill_student --config C --resume_from_checkpoint auto   # after a crash

With no arguments: the embedded demo (full_pipeline on configs/demo.json, offline, a few minutes on CPU).
Bad input exits with code 2 and a one-line message.
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="main.py", description="Knowledge distillation for seq2seq language models.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["train_teacher", "distill_student", "benchmark", "full_pipeline"],
                   default="full_pipeline", help="what to run (default: full_pipeline)")
    p.add_argument("--config", help="JSON or YAML config (default: the embedded demo, configs/demo.json)")
    p.add_argument("--teacher_config", help="file holding the teacher section (overrides --config's)")
    p.add_argument("--student_config", help="file holding the student section (overrides --config's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides training.device")
    p.add_argument("--output_dir", help="overrides training.output_dir")
    p.add_argument("--checkpoint_dir", help="overrides training.checkpoint_dir")
    p.add_argument("--log_dir", help="overrides training.log_dir")
    p.add_argument("--resume_from_checkpoint", metavar="PATH|auto",
                   help="continue from a checkpoint file, or 'auto' for the newest in the checkpoint directory")
    p.add_argument("--teacher_path", help="a trained teacher directory (…/teacher/final) to distill from or benchmark")
    p.add_argument("--student_path", help="a trained student directory to benchmark")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set training.seed=1")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in output_dir")
    p.add_argument("--with_baseline", action="store_true",
                   help="also train the student with cross-entropy only and compare (training.baseline=true)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p.parse_args(argv)


def cli_overrides(args) -> list[tuple[str, str]]:
    """Flags that are shorthands for --set, applied before the explicit --set values, each with the
    flag as the user wrote it (config errors name it). An empty value is passed on, to be refused."""
    pairs = [("device", "training.device"), ("output_dir", "training.output_dir"),
             ("checkpoint_dir", "training.checkpoint_dir"), ("log_dir", "training.log_dir")]
    flags = [(f"--{attr} {shlex.quote(value)}", f"{key}={value}") for attr, key in pairs
             if (value := getattr(args, attr)) is not None]
    flags += [("--with_baseline", "training.baseline=true")] if getattr(args, "with_baseline", False) else []
    return flags + [(f"--set {text}", text) for text in args.overrides]


def run(argv=None) -> int:
    args = parse_args(argv)
    # Imports after argument parsing so that --help is instant.
    import json

    from settings import load_config, to_dict
    from pipeline import MODES, RunOptions
    sections = {k: v for k, v in (("teacher", args.teacher_config), ("student", args.student_config)) if v}
    cfg = load_config(args.config, cli_overrides(args), sections)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    MODES[args.mode](cfg, RunOptions(args.resume_from_checkpoint, args.overwrite, args.teacher_path,
                                     args.student_path))
    return 0


def launcher() -> list[str]:
    """How this process was started, up to the script (``python /path/to/main.py``, ``./main.py``,
    ``python -X dev main.py``), so that a printed command works verbatim where it was typed."""
    orig = getattr(sys, "orig_argv", None)
    if sys.argv and sys.argv[0].endswith("main.py") and orig and len(orig) >= len(sys.argv):
        return orig[:len(orig) - len(sys.argv) + 1]
    return [sys.executable, str(Path(__file__).resolve())]  # main() called from Python


def resume_command(argv: list[str], launched: list[str] | None = None) -> str:
    """The command line that continues an interrupted run (``launched``: see :func:`launcher`)."""
    keep, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume_from_checkpoint":
            skip = True
        elif arg != "--overwrite" and not arg.startswith("--resume_from_checkpoint="):
            keep.append(arg)
    return shlex.join([*(launched or ["python", "main.py"]), *keep, "--resume_from_checkpoint", "auto"])


def _env_int(var: str, default: int) -> int:
    """An integer environment variable, ``default`` when unset or malformed (launch_env reports that)."""
    try:
        return int(os.environ.get(var, default))
    except ValueError:
        return default


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    from utils.errors import TrainingInterrupted, UserError
    world = _env_int("WORLD_SIZE", 1)
    launched, rank = world > 1, _env_int("RANK", 0)  # under torchrun every rank prints its error, marked when not 0
    mark = f"[rank {rank}] " if launched and 0 < rank < world else ""
    try:
        if {"WORLD_SIZE", "RANK", "LOCAL_RANK"} & set(os.environ):  # a launcher's: checked before anything runs
            from utils.distributed import launch_env
            launch_env()
        return run(argv)
    except UserError as e:
        print(f"{mark}error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "can't allocate memory" in str(e):  # the CPU allocator: a model or batch larger than the RAM
            print("error: not enough memory (" + " ".join(str(e).split())[:120] + "); lower the model size "
                  "(<role>.arch), training.<role>.batch_size, eval_batch_size or benchmark.batch_size", file=sys.stderr)
            return 2
        if "out of memory" not in str(e):
            raise
        print("error: the GPU ran out of memory; lower training.<role>.batch_size (raise "
              "gradient_accumulation_steps to keep the effective batch), eval_batch_size or benchmark.batch_size, "
              "or use precision bf16/fp16", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if launched:  # our argv is torchrun's child's, not the user's command
            if not rank:
                print(f"{e}. Resume with the same torchrun command (any number of processes) ending in: "
                      f"{resume_command(argv, ['main.py'])}", file=sys.stderr)
        else:
            print(f"{e}. Resume with: {resume_command(argv, launcher())}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted (no checkpoint written since the last one)", file=sys.stderr)
        return 130
    finally:
        if (dist := sys.modules.get("utils.distributed")) is not None:
            dist.shutdown()  # leave the torchrun process group cleanly


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
