"""What the study checks before it writes anything: the kinds of its paths, the files of its finished
runs, and (``--aggregate-only``) that every run is finished. Each refusal is one line naming the path."""
from __future__ import annotations

import shlex
from pathlib import Path

from benchmark.study.runs import RECORD, StudyRun
from benchmark.verdict import TRIVIAL
from utils.errors import UserError

SPLIT_FILES = ("train", "validation", "test", "unlabeled")


def kind(path: Path) -> str:
    if path.is_dir():
        return "a directory"
    if path.is_file():
        return "a file"
    return "a broken link" if path.is_symlink() else "a special file"


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def check_layout(study_file, study_dir: Path, runs: list[StudyRun]) -> None:
    """Every path the study creates, reads or writes under output_dir is absent or of the right kind."""
    first = study_dir
    while not _present(first):  # the nearest existing ancestor must be a directory: mkdir goes through it
        first = first.parent
    if not first.is_dir():
        where = "" if first == study_dir else f": {first}"
        raise UserError(f"{study_file}: output_dir {study_dir}{where} is {kind(first)}, not a directory; "
                        f"choose another output_dir, or move that file away")
    for path in directories(study_dir, runs):  # parents before children: a file is named where it stands
        if _present(path) and not path.is_dir():
            raise UserError(f"{path} is {kind(path)} where the study keeps a directory; move it away, or choose "
                            f"another output_dir in {study_file}")
    for path in files(study_dir, runs):
        if _present(path) and not path.is_file():
            raise UserError(f"{path} is {kind(path)} where the study keeps a file; move it away, or choose "
                            f"another output_dir in {study_file}")


def directories(study_dir: Path, runs: list[StudyRun]) -> list[Path]:
    teacher = next((r for r in runs if r.method is None), None)
    return [study_dir, *(study_dir / d for d in ("split", "logs", "runs", "teacher")),
            *([teacher.done.parent, teacher.done] if teacher else []), *(r.directory for r in runs)]


def files(study_dir: Path, runs: list[StudyRun]) -> list[Path]:
    return [*(study_dir / "split" / f"{n}.jsonl" for n in SPLIT_FILES), study_dir / "logs" / "study.log",
            study_dir / "study_results.json", study_dir / "study_table.md",
            *(study_dir / "logs" / f"{r.name}.log" for r in runs), *(r.directory / RECORD for r in runs),
            *(p for r in runs if r.method for p in (r.done, *prediction_files(r).values()))]


def prediction_files(run: StudyRun, fixed: bool = True) -> dict[str, Path]:
    """system name in that run's benchmark -> its predictions file; ``fixed``: with the teacher's and the
    trivial systems' (the table reads those from the first run of ce_only alone)."""
    names = ["student"] + (["student_ce"] if run.hosts_ce_only else []) + (["teacher", *TRIVIAL] if fixed else [])
    return {n: run.directory / f"predictions_{n}.jsonl" for n in names}


def check_option_paths(runs: list[StudyRun]) -> None:
    """Every ``*_file`` / ``*_dir`` option of every run's config (the base config, the study's overrides
    and methods) is absent or of its kind: a run would fail on it only after the teacher's training."""
    for run in runs:
        for key, value in _path_options(run.settings or {}):
            path = Path(value)
            want_dir = key.endswith("dir")
            if _present(path) and (path.is_dir() != want_dir or not (path.is_dir() or path.is_file())):
                raise UserError(f"study run {run.name}: {key} {path} is {kind(path)}, not "
                                f"{'a directory' if want_dir else 'a file'}; fix it in the study file "
                                f"(overrides, methods) or its base_config")


def _path_options(settings: dict, prefix: str = ""):
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _path_options(value, f"{name}.")
        elif isinstance(value, str) and value and (key.endswith(("_file", "_dir")) or key == "dir"):
            yield name, value


def check_finished_runs(runs: list[StudyRun], sources: list[str]) -> None:
    """The reports of every finished student run parse and are of this split (what the table reads)."""
    from benchmark.study.aggregate import latency, read_predictions
    first = next((r for r in runs if r.hosts_ce_only), None)
    for run in runs:
        if run.method and run.done.exists():
            for name in ("student", "teacher") + (("student_ce",) if run.hosts_ce_only else ()):
                latency(run.done, name)
            for path in prediction_files(run, fixed=run is first).values():
                read_predictions(path, sources)


def check_all_finished(runs: list[StudyRun], study_dir: Path, study_file) -> None:
    """--aggregate-only: refuse (writing nothing) unless every student run is finished."""
    students = [r for r in runs if r.method]
    unfinished = [r.name for r in students if not r.done.exists()]
    command = shlex.join(["python", "-m", "benchmark.study", "--config", str(study_file)])
    if len(unfinished) == len(students):
        raise UserError(f"--aggregate-only: no finished runs yet in {study_dir}; run them first: {command}")
    if unfinished:
        shown = ", ".join(unfinished[:8]) + (f" and {len(unfinished) - 8} more" if len(unfinished) > 8 else "")
        raise UserError(f"--aggregate-only: {len(unfinished)} of {len(students)} runs are unfinished ({shown}); "
                        f"finish them first: {command}")
