"""``python -m benchmark.study --config STUDY_FILE``: run (or continue) a distillation study."""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.study", description=(
        "Train the teacher once, distill and benchmark every method x seed (each a resumable python main.py run), "
        "and write study_results.json and study_table.md. Rerun the same command after a kill to continue."))
    p.add_argument("--config", required=True, help="the study file, e.g. configs/studies/paradetox.yaml")
    p.add_argument("--aggregate-only", action="store_true",
                   help="start no run; rebuild the table from the finished runs (all must be finished)")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from benchmark.study import run_study
    from benchmark.study.runs import RunFailed
    from utils.errors import UserError
    try:
        run_study(args.config, aggregate_only=args.aggregate_only)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
