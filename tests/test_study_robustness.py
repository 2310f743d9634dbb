"""The study against a hostile tester (issue 25): files it wrote, later damaged; paths of the wrong kind;
--aggregate-only before the runs are finished. Each is refused in one line naming the path, exit 2,
before anything is written (a damaged split file, a function of the data and the seeds, is rebuilt)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from benchmark.study.__main__ import main
from benchmark.study.split import read_split_file
from test_study import FakeRuns, _study_files
from utils.errors import UserError

METHODS = {"kd": [], "skew": ["distill.ce_weight=0.3"]}  # kd hosts ce_only and the teacher's predictions


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished study (fake runs: teacher, kd_seed0, skew_seed0) and a pristine copy of it."""
    from benchmark.study import run_study
    from conftest import TINY_CONFIG
    root = tmp_path_factory.mktemp("finished")
    (root / "work").mkdir()
    run_study(_study_files(root / "work", TINY_CONFIG, METHODS), launch=FakeRuns())
    shutil.copytree(root / "work", root / "pristine")
    return root


@pytest.fixture
def study(finished) -> Path:
    """The finished study as it was, at its own path (its records hold absolute paths); its study file."""
    shutil.rmtree(finished / "work")
    shutil.copytree(finished / "pristine", finished / "work")
    return finished / "work" / "study.yaml"


def snapshot(root: Path) -> dict:
    """Every path under root with its kind, size and mtime: what a refusal must leave as it was."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def refused(argv: list[str], capsys, names: Path | str, root: Path) -> str:
    """Run the CLI: exit 2, one line naming ``names``, nothing under root written or changed."""
    before = snapshot(root)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(names) in err, err
    assert snapshot(root) == before
    return err


# --------------------------------------------------------------------------- 1. damaged files
def _rows(text: str) -> list:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def _each(text: str, change) -> str:
    """``change`` applied to the JSON value of a .json file, or to every row of a .jsonl one."""
    return "".join(json.dumps(change(r)) + "\n" for r in _rows(text))


def _first_third_of_lines(b: bytes) -> bytes:
    """Cut at a line end, where a cut leaves good rows (a one-line file: at a third of its bytes)."""
    lines = b.splitlines(keepends=True)
    return b"".join(lines[:len(lines) // 3]) if len(lines) >= 3 else b[:len(b) // 3]


def _drop_last(row: dict) -> dict:
    return dict(list(row.items())[:-1])


def _last_to_int(row: dict) -> dict:
    return {**row, list(row)[-1]: 5}


DAMAGE = {  # name -> (file name, its bytes) -> damaged bytes
    "random_bytes": lambda name, b: random.Random(len(b)).randbytes(300),
    "cut_to_a_third": lambda name, b: b[:len(b) // 3],
    "first_third_of_lines": lambda name, b: _first_third_of_lines(b),
    "not_json_line": lambda name, b: b + b"this line is not JSON\n",
    "list_for_object": lambda name, b: (json.dumps([json.loads(b)]) if name.endswith(".json") else
                                        _each(b.decode(), lambda r: [r])).encode(),
    "missing_key": lambda name, b: (json.dumps({k: v for k, v in json.loads(b).items() if k in ("settings",)})
                                    if name.endswith(".json") else _each(b.decode(), _drop_last)).encode(),
    "wrong_type": lambda name, b: (json.dumps({**json.loads(b), next(iter(json.loads(b))): 5})
                                   if name.endswith(".json") else _each(b.decode(), _last_to_int)).encode(),
}
RUN_FILES = ["teacher/study_run.json", "runs/skew_seed0/study_run.json",
             "runs/kd_seed0/benchmark_results.json", "runs/skew_seed0/benchmark_results.json",
             *(f"runs/kd_seed0/predictions_{n}.jsonl" for n in
               ("student", "student_ce", "teacher", "copy_source", "delete_toxic_words")),
             "runs/skew_seed0/predictions_student.jsonl"]


def _damage(study_file: Path, rel: str, how: str) -> Path:
    path = study_file.parent / "study" / rel
    path.write_bytes(DAMAGE[how](path.name, path.read_bytes()))
    return path


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("rel", RUN_FILES)
def test_a_damaged_run_file_is_refused_naming_it(study, capsys, rel, how):
    path = _damage(study, rel, how)
    err = refused(["--config", str(study)], capsys, path, study.parent)
    assert "is damaged" in err and ("rerun the study" in err)


@pytest.mark.parametrize("rel", RUN_FILES)
def test_a_damaged_run_file_is_refused_by_aggregate_only_too(study, capsys, rel):
    path = _damage(study, rel, "cut_to_a_third")
    assert "is damaged" in refused(["--config", str(study), "--aggregate-only"], capsys, path, study.parent)


@pytest.mark.parametrize("bad_models, why", [
    ([{"latency_p50_ms": 3.0}], "no 'name'"), ([{"name": "student", "latency_p50_ms": "fast"}], "latency_p50_ms"),
    ([{"name": "student", "latency_p50_ms": float("nan")}], "latency_p50_ms"), (["student"], "JSON str"),
    ([{"name": "teacher", "latency_p50_ms": 9.0}], "no model 'student'"),
])
def test_damaged_benchmark_results_inside_the_models_list(study, capsys, bad_models, why):
    path = study.parent / "study" / "runs" / "skew_seed0" / "benchmark_results.json"
    path.write_text(json.dumps({"models": bad_models}))
    err = refused(["--config", str(study)], capsys, path, study.parent)
    assert why in err and "benchmarked again" in err


def test_a_missing_prediction_file_of_a_finished_run_is_refused(study, capsys):
    path = study.parent / "study" / "runs" / "kd_seed0" / "predictions_student_ce.jsonl"
    path.unlink()
    assert "missing from a finished run" in refused(["--config", str(study)], capsys, path, study.parent)


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", ["train", "validation", "test"])
def test_a_damaged_split_file_is_rebuilt_with_a_warning(study, name, how):
    path = study.parent / "study" / "split" / f"{name}.jsonl"
    good = path.read_bytes()
    _damage(study, f"split/{name}.jsonl", how)
    assert main(["--config", str(study)]) == 0
    assert path.read_bytes() == good
    log = (study.parent / "study" / "logs" / "study.log").read_text()
    assert f"{path} was damaged" in log and "rebuilt it from the data" in log


def test_a_split_that_parses_and_differs_is_refused_not_rebuilt(study, capsys):
    path = study.parent / "study" / "split" / "validation.jsonl"
    rows = _rows(path.read_text())
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    assert "holds another split" in refused(["--config", str(study)], capsys, path, study.parent)


@pytest.mark.parametrize("how", DAMAGE)
def test_read_split_file_refuses_a_damaged_file(tmp_path, how):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"source": f"s{i}", "references": ["r"] * i}) + "\n" for i in range(1, 8)))
    path.write_bytes(DAMAGE[how](path.name, path.read_bytes()))
    if how == "first_third_of_lines":  # a shorter file of good rows is no damage this reader can see
        assert read_split_file(path)[0].source == "s1"
        return
    with pytest.raises(UserError, match=f"{path} is damaged") as e:
        read_split_file(path)
    assert len(str(e.value).splitlines()) == 1


def test_a_damaged_record_of_a_later_run_refuses_before_an_earlier_run_starts(study):
    (study.parent / "study" / "runs" / "kd_seed0" / "benchmark_results.json").unlink()  # kd_seed0 unfinished
    _damage(study, "runs/skew_seed0/study_run.json", "random_bytes")
    from benchmark.study import run_study
    fake = FakeRuns()
    before = snapshot(study.parent)
    with pytest.raises(UserError, match="skew_seed0/study_run.json is damaged"):
        run_study(study, launch=fake)
    assert fake.calls == [] and snapshot(study.parent) == before


# --------------------------------------------------------------------------- 2. paths of the wrong kind
def _fresh(tmp_path: Path, **extra) -> Path:
    from conftest import TINY_CONFIG
    return _study_files(tmp_path, TINY_CONFIG, METHODS, **extra)


def _make(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if kind == "dir" else path.write_text("not what the study keeps here\n")
    return path


UNDER_OUTPUT_DIR = [  # (path under output_dir, the wrong kind put there)
    *((d, "file") for d in ("", "split", "logs", "runs", "teacher", "teacher/teacher", "teacher/teacher/final",
                            "runs/kd_seed0", "runs/skew_seed0")),
    *((f, "dir") for f in ("split/train.jsonl", "split/test.jsonl", "split/unlabeled.jsonl", "logs/study.log",
                           "logs/teacher.log", "logs/skew_seed0.log", "study_results.json", "study_table.md",
                           "teacher/study_run.json", "runs/kd_seed0/study_run.json",
                           "runs/kd_seed0/benchmark_results.json", "runs/skew_seed0/predictions_student.jsonl",
                           "runs/kd_seed0/predictions_student_ce.jsonl", "runs/kd_seed0/predictions_teacher.jsonl")),
]


@pytest.mark.parametrize("aggregate_only", [False, True])
@pytest.mark.parametrize("rel, kind", UNDER_OUTPUT_DIR)
def test_a_study_path_of_the_wrong_kind_is_refused_before_anything_is_written(tmp_path, capsys, rel, kind,
                                                                            aggregate_only):
    path = _make(tmp_path / "study" / rel if rel else tmp_path / "study", kind)
    argv = ["--config", str(_fresh(tmp_path))] + (["--aggregate-only"] if aggregate_only else [])
    err = refused(argv, capsys, path, tmp_path)
    assert f"is a {'file' if kind == 'file' else 'directory'}" in err


def test_an_output_dir_under_a_file_is_refused(tmp_path, capsys):
    blocker = _make(tmp_path / "blocker", "file")
    study = _fresh(tmp_path)
    data = yaml.safe_load(study.read_text())
    study.write_text(yaml.safe_dump({**data, "output_dir": str(blocker / "deeper" / "study")}))
    assert "output_dir" in refused(["--config", str(study)], capsys, blocker, tmp_path)


def test_config_that_is_a_directory_is_refused(tmp_path, capsys):
    err = refused(["--config", str(_make(tmp_path / "studies", "dir"))], capsys, tmp_path / "studies", tmp_path)
    assert "is a directory" in err


def test_a_base_config_that_is_a_directory_is_refused(tmp_path, capsys):
    study = _fresh(tmp_path)
    base = _make(tmp_path / "basedir", "dir")
    study.write_text(yaml.safe_dump({**yaml.safe_load(study.read_text()), "base_config": "basedir"}))
    assert "base_config" in refused(["--config", str(study)], capsys, base, tmp_path)


@pytest.mark.parametrize("where, option, kind", [
    ("methods", "data.unlabeled_file", "dir"),
    ("overrides", "data.unlabeled_file", "dir"),
    ("methods", "distill.teacher_cache.dir", "file"),
])
def test_a_path_option_of_a_run_of_the_wrong_kind_is_refused(tmp_path, capsys, where, option, kind):
    path = _make(tmp_path / "wrong", kind)
    sets = [f"{option}={path}"]
    study = _fresh(tmp_path, **({"overrides": sets} if where == "overrides" else {}))
    if where == "methods":
        data = yaml.safe_load(study.read_text())
        study.write_text(yaml.safe_dump({**data, "methods": {**METHODS, "skew": sets}}))
    assert option.rsplit(".", 1)[-1] in refused(["--config", str(study)], capsys, path, tmp_path)


# --------------------------------------------------------------------------- 3. --aggregate-only, unfinished
def test_aggregate_only_on_a_fresh_study_writes_nothing(tmp_path, capsys):
    study = _fresh(tmp_path)
    err = refused(["--config", str(study), "--aggregate-only"], capsys, tmp_path / "study", tmp_path)
    assert "no finished runs yet" in err and f"--config {study}" in err
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("unfinish, message", [
    (["skew_seed0"], "1 of 2 runs are unfinished (skew_seed0)"),
    (["kd_seed0"], "1 of 2 runs are unfinished (kd_seed0)"),
    (["kd_seed0", "skew_seed0"], "no finished runs yet"),
])
def test_aggregate_only_names_the_unfinished_runs_and_writes_nothing(study, capsys, unfinish, message):
    for name in unfinish:
        (study.parent / "study" / "runs" / name / "benchmark_results.json").unlink()
    err = refused(["--config", str(study), "--aggregate-only"], capsys, study.parent / "study", study.parent)
    assert message in err


def test_aggregate_only_on_a_finished_study_rebuilds_the_table(study):
    results = study.parent / "study" / "study_results.json"
    results.unlink()
    assert main(["--config", str(study), "--aggregate-only"]) == 0
    assert set(json.loads(results.read_text())["systems"]) >= {"teacher", "ce_only", "kd", "skew"}
