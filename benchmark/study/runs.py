"""The study's runs: the teacher once, then every method x seed, each a ``python main.py`` subprocess.

Every run has its own ``training.output_dir`` under ``<study_dir>`` and is started with
``--resume_from_checkpoint auto``, so rerunning the study after a kill continues it: a run whose
result exists is skipped (the teacher's ``teacher/final``, a student run's
``benchmark_results.json``), an interrupted one resumes from its newest checkpoint (the project's
own resume, stage by stage). The teacher run is ``--mode train_teacher``; a student run is
``--mode full_pipeline --teacher_path <the teacher>``: it distills the student, trains the CE-only
student when it hosts ``ce_only`` (``--with_baseline``) and benchmarks them, the teacher and the
trivial systems on the test split with the config's decoding, in one run directory.
"""
from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from benchmark.study.config import STUDY_DIR, StudyConfig
from benchmark.verdict import TRIVIAL  # name -> what the trivial system does
from utils.errors import UserError
from utils.files import atomic_write_text, fields, read_json, str_list
from utils.logs import log

MAIN = Path(__file__).resolve().parents[2] / "main.py"
# keys a method may not change: every student must see the same teacher, data and split
_FIXED = ("teacher.", "training.teacher.", "training.seed", "training.output_dir", "training.baseline",
          "training.checkpoint_dir", "training.log_dir", "data.train_file", "data.validation_file", "data.test_file",
          "data.synthetic", "data.dataset_name", "data.source_column", "data.target_column", "data.prefix",
          "benchmark.")


@dataclass(frozen=True)
class StudyRun:
    """One subprocess of the study."""

    name: str              # "teacher" or "<method>_seed<seed>"
    method: str | None     # None for the teacher
    seed: int | None
    directory: Path        # its training.output_dir
    command: list[str]
    done: Path             # exists once the run is complete
    hosts_ce_only: bool = False
    settings: dict | None = None  # the resolved config that shapes the run (an edited base config shows here)


class RunFailed(Exception):
    """A run exited with an error: the study stops, showing the end of its log."""

    def __init__(self, run: StudyRun, code: int, log_path: Path):
        tail = "".join(deque(log_path.open(encoding="utf-8", errors="replace"), maxlen=15)) if log_path.exists() else ""
        stopped = code in (130, 143)  # SIGINT / SIGTERM: the run saved a checkpoint
        super().__init__(f"study run {run.name} {'was stopped by a signal' if stopped else 'failed'} (exit {code}); the "
                         f"last lines of {log_path}:\n{tail.rstrip()}\n{'' if stopped else 'Fix the cause, then '}"
                         f"rerun the same study command: finished runs are skipped, this one resumes.")
        self.code = code


def method_dir(study_dir: Path, method: str, seed: int) -> Path:
    return study_dir / "runs" / f"{method}_seed{seed}"


def host_method(study: StudyConfig) -> str:
    """The method whose runs also train the CE-only student (the first declared)."""
    return next(iter(study.methods))


def teacher_final(study_dir: Path) -> Path:
    return study_dir / "teacher" / "teacher" / "final"


def plan(study: StudyConfig, base: Path, study_dir: Path, data_sets: list[str]) -> list[StudyRun]:
    """Every run of the study, in order (the teacher, then seed by seed every method), its config
    checked in-process first, so that a bad override fails in seconds, not after hours of training."""
    from settings import load_config as load, to_dict
    common = [s.replace(STUDY_DIR, str(study_dir)) for s in study.overrides] + data_sets
    teacher_dir = study_dir / "teacher"
    head = [sys.executable, str(MAIN), "--config", str(base)]
    teacher_sets = common + _baseline_rows(load(base, common))
    t = to_dict(load(base, teacher_sets))
    teacher_settings = {"teacher": t["teacher"], "data": t["data"], "training.teacher": t["training"]["teacher"],
                        **{f"training.{k}": t["training"][k] for k in ("seed", "precision")}}
    runs = [StudyRun("teacher", None, None, teacher_dir,
                     head + ["--mode", "train_teacher", *_sets(teacher_sets), "--output_dir", str(teacher_dir),
                             "--resume_from_checkpoint", "auto"], teacher_final(study_dir),
                     settings=teacher_settings)]
    for seed in study.seeds:
        for method, sets in study.methods.items():
            for s in sets:
                if s.split("=", 1)[0].strip().startswith(_FIXED):
                    raise UserError(f"methods.{method}: {s!r}: a method may not change {s.split('=', 1)[0]} "
                                    f"(every student sees the same teacher, data, seed list and decoding)")
            host = method == host_method(study)
            run_sets = teacher_sets + [s.replace(STUDY_DIR, str(study_dir)) for s in sets] + [
                f"training.seed={seed}", f"training.baseline={str(host).lower()}"]
            try:
                cfg = load(base, run_sets)
            except UserError as e:
                raise UserError(f"methods.{method}: {e}") from None
            _check(cfg, method)
            d = method_dir(study_dir, method, seed)
            runs.append(StudyRun(f"{method}_seed{seed}", method, seed, d, head + [
                "--mode", "full_pipeline", *_sets(run_sets), "--output_dir", str(d),
                "--teacher_path", str(teacher_final(study_dir)), "--resume_from_checkpoint", "auto"],
                d / "benchmark_results.json", host, settings=to_dict(cfg)))
    return runs


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def _baseline_rows(cfg) -> list[str]:
    """The trivial systems every benchmark of the study shows (beside the config's own rows)."""
    rows = list(dict.fromkeys([*TRIVIAL, *cfg.benchmark.baselines]))
    return [f"benchmark.baselines=[{', '.join(rows)}]"]


def _check(cfg, method: str) -> None:
    """What a study needs of each student run beyond a valid config."""
    from pipeline import build_objective
    try:
        build_objective(cfg)
    except UserError as e:
        raise UserError(f"methods.{method}: {e}") from None
    if cfg.training.student.max_steps is None:
        raise UserError(f"methods.{method}: training.student.max_steps is not set; a study compares methods at "
                        f"the same number of optimizer steps: set it in the base config or the study's overrides")


# --------------------------------------------------------------------------- running
def execute(runs: list[StudyRun], log_dir: Path, launch=None) -> None:
    """Run what is not finished, in order; one log line per run started, skipped or finished."""
    launch = launch or run_logged
    to_record = {run.name for run in runs if check_settings(run)}  # every refusal before the first run starts
    for i, run in enumerate(runs, 1):
        what = "resuming" if run.directory.exists() else "started"
        if run.name in to_record:
            atomic_write_text(run.directory / RECORD, json.dumps(_settings_now(run), indent=1) + "\n")
        if run.done.exists():
            log.info("study run %s: skipped (%d/%d; finished earlier: %s exists)", run.name, i, len(runs), run.done)
            continue
        log.info("study run %s: %s (%d/%d) in %s%s", run.name, what, i, len(runs), run.directory,
                 " (also the CE-only student, ce_only)" if run.hosts_ce_only else "")
        log_path = log_dir / f"{run.name}.log"
        t0 = time.monotonic()
        code = launch(run.command, log_path)
        if code != 0 or not run.done.exists():
            raise RunFailed(run, code or 1, log_path)
        log.info("study run %s: finished in %s", run.name, _duration(time.monotonic() - t0))


RECORD = "study_run.json"  # in a run directory: the settings it was started with


def _settings_now(run: StudyRun) -> dict:
    return {"args": run.command[2:], "settings": run.settings}  # the command without the interpreter's path


def check_settings(run: StudyRun) -> bool:
    """A run directory is continued or kept only for the same settings (recorded at its start): an
    edited study file or base config must not mix results of two settings in one table. True when
    the record is to be written (none yet, or one from before settings were recorded). Writes nothing."""
    now = _settings_now(run)
    before = _read_record(run) if (run.directory / RECORD).exists() else None
    if before is None:
        return True
    changed = ("the study file changed" if before["args"] != now["args"] else
               _first_difference(before.get("settings", run.settings), run.settings, "its base config changed: "))
    if changed:
        raise UserError(f"study run {run.name}: {run.directory} was run with other settings ({changed}); delete that "
                        f"directory to run it again, or use another output_dir")
    return before != now


def _read_record(run: StudyRun) -> dict:
    fix = (f"the settings {run.name} was started with are unknown: delete {run.directory} and rerun the study "
           f"to redo that run")
    return read_json(run.directory / RECORD, fix, lambda r: fields(r, args=str_list) or (
        "" if isinstance(r.get("settings", {}), dict) else "'settings' is no object"))


def _first_difference(old, new, prefix: str, key: str = "") -> str:
    """'' when equal, else the first differing key with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            found = _first_difference(old.get(k), new.get(k), prefix, f"{key}.{k}" if key else k)
            if found:
                return found
        return ""
    return "" if old == new else f"{prefix}{key} {old!r} -> {new!r}"


def run_logged(command: list[str], log_path: Path) -> int:
    """Run ``command`` with its output appended to ``log_path``; the exit code. A SIGTERM to the study
    is passed on (the run checkpoints and exits); Ctrl-C reaches the run itself (same process group)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"\n$ {shlex.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        try:
            while True:
                try:
                    return proc.wait()
                except KeyboardInterrupt:  # the run got it too: wait while it checkpoints
                    continue
        finally:
            signal.signal(signal.SIGTERM, previous)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def ce_only_dir(study: StudyConfig, study_dir: Path, seed: int) -> Path:
    """The run directory holding ce_only's model and predictions for ``seed``."""
    return method_dir(study_dir, host_method(study), seed)

