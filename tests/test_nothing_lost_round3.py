"""Issue 25: our own files damaged, paths of the wrong kind, refusals before anything is written,
finished work never rewritten, exports that do not depend on the path that wrote them, and
messages that point at the right fix.

The one-line cases use test_bad_input's machinery (exit 2, exactly one ``error:`` line, nothing of
the protected run changed) and add two checks: a fresh output directory stays absent, and a
misleading fix is not named.
"""
from __future__ import annotations

import gzip
import json
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import pytest

from settings.paths import PATHS
from test_bad_input import (STUDENT_CKPT, Ctx, changes, error_problems, prev_run, run_in_process,  # noqa: F401
                            run_subprocess, snapshot)


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx], list]
    problem: str | tuple[str, ...]
    fix: str | tuple[str, ...]
    absent: tuple[str, ...] = ()  # fragments a right message does not contain (a wrong fix)
    subprocess: bool = False


CASES: list[Case] = []


def case(problem, fix, absent=(), subprocess=False):
    def register(fn):
        CASES.append(Case(fn.__name__, fn, problem, fix, tuple(absent), subprocess))
        return fn
    return register


def unfinished_copy(ctx) -> Path:
    """The shared run as if the student's training had stopped before its export."""
    run = ctx.copy_run()
    shutil.rmtree(run / "student" / "final")
    return run


def resume(ctx, run: Path, checkpoint: str = "auto", *extra) -> list:
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--resume_from_checkpoint", checkpoint, *extra]


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit inside the largest tensor of a checkpoint: the file still unpickles."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- 1. our files, damaged
@case("is damaged", "resume from an older checkpoint")
def checkpoint_with_a_flipped_bit(ctx):
    run = unfinished_copy(ctx)
    flip_tensor_byte(run / STUDENT_CKPT)
    return resume(ctx, run, str(run / STUDENT_CKPT))


@case("the best model so far", "delete it")
def damaged_best_model(ctx):
    run = unfinished_copy(ctx)
    best = run / "checkpoints/student/best.pt"
    best.write_bytes(best.read_bytes()[:len(best.read_bytes()) // 3])
    return resume(ctx, run)


@case(("not a checkpoint written by this tool", "cannot be read"), "'auto'", subprocess=True)
def foreign_pickle_protocol_4(ctx):  # torch warns about the old format before refusing: not shown
    import torch
    path = Path(ctx.write("old.pt", b""))
    torch.save({"a": 1}, path, pickle_protocol=4, _use_new_zipfile_serialization=False)
    return ["--mode", "train_teacher", "--config", str(ctx.prev.config), "--output_dir", ctx.out,
            "--resume_from_checkpoint", str(path)]


@case("training_summary.json is damaged", "distill the student again")
def damaged_training_summary(ctx):
    run = ctx.copy_run()
    (run / "student/training_summary.json").write_bytes(b"\x8f{\"ste")
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--with_baseline", "--resume_from_checkpoint", "auto"]


# --------------------------------------------------------------------------- 4. refused before anything is written
@case("a resume cannot change", "distill.teacher_cache")
def resume_adding_a_teacher_cache(ctx):
    return resume(ctx, unfinished_copy(ctx), "auto", "--set", "distill.teacher_cache.top_k=4")


@case("a resume cannot change", "distill.pseudo_labels")
def resume_adding_pseudo_labels(ctx):
    return resume(ctx, unfinished_copy(ctx), "auto", "--set", "distill.pseudo_labels.num_beams=1")


@case("the student stage is finished", "--overwrite")
def explicit_resume_of_a_finished_stage(ctx):
    run = ctx.copy_run()
    return resume(ctx, run, str(run / STUDENT_CKPT))


# --------------------------------------------------------------------------- 8. messages that name the right fix
@case("is not a text table", "give a CSV", absent=("data.encoding",))
def transfer_set_of_random_bytes(ctx):
    import random
    noise = random.Random(0).randbytes(4096)
    cfg = ctx.config()
    cfg["data"]["unlabeled_file"] = ctx.write("transfer.tsv", noise)
    cfg["distill"]["pseudo_labels"] = {"num_beams": 1}
    return ["--mode", "distill_student", "--config", ctx.write_config(cfg), "--output_dir", ctx.out,
            "--teacher_path", str(ctx.prev.out / "teacher/final")]


@case("UTF-16 text", "data.encoding: utf-16")
def utf16_training_file(ctx):
    rows = "source,target\n" + "".join(f"say {i},tell {i}\n" for i in range(30))
    cfg = ctx.file_data_config(ctx.write("train.csv", rows, encoding="utf-16"))
    return ["--mode", "train_teacher", "--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("gzip-compressed", "decompress it")
def gzipped_training_file(ctx):
    rows = "source,target\n" + "".join(f"say {i},tell {i}\n" for i in range(30))
    cfg = ctx.file_data_config(ctx.write("train.csv", gzip.compress(rows.encode())))
    return ["--mode", "train_teacher", "--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("alone holds", "shorten that value", absent=("data file",))
def config_with_a_huge_template(ctx):
    text = json.dumps(ctx.config(), indent=1)[:-2] + ',\n "teacher2": "' + "x" * 1_200_000 + '"\n}'
    return ["--config", ctx.write("big.json", text), "--output_dir", ctx.out]


@case("look like data", "not a data file")
def data_file_given_as_config(ctx):
    return ["--config", ctx.write("data.yaml", "".join(f"- row {i} of a data file\n" for i in range(80_000))),
            "--output_dir", ctx.out]


# --------------------------------------------------------------------------- 2. paths of the wrong kind
def _wrong_kind(ctx, key: str, kind: str) -> list:
    """A run whose ``key`` names an existing path of the other kind."""
    cfg = ctx.config()
    wrong = ctx.tmp / "wrong"
    wrong.mkdir() if kind == "file" else wrong.write_text("a file\n")
    ctx.protect(wrong)
    argv = ["--mode", "distill_student", "--output_dir", ctx.out, "--teacher_path", str(ctx.prev.out / "teacher/final")]
    if key == "data.train_file":
        del cfg["data"]["synthetic"]
    if key == "data.unlabeled_file":
        cfg["distill"]["pseudo_labels"] = {"num_beams": 1}
    if key == "benchmark.models[].path":
        cfg["benchmark"]["models"] = [{"name": "other", "path": str(wrong)}]
    elif key.endswith("name_or_path"):
        role = key.split(".")[0]
        argv += ["--set", f"{role}.init=pretrained", "--set", f"{role}.tokenizer.train=null", "--set",
                 f"{key}=./{wrong.name}"]
        ctx.cwd = ctx.tmp
    else:
        argv += ["--set", f"{key}={wrong}"]
    return ["--config", ctx.write_config(cfg), *argv]


for _key, _kind in PATHS.items():
    if _kind != "any":  # a tokenizer path may be a file or a directory
        CASES.append(Case(f"wrong_kind_{_key}", lambda ctx, k=_key, t=_kind: _wrong_kind(ctx, k, t),
                          "is a directory" if _kind == "file" else "is a file", "give "))


@case("is a file", "give the saved model's directory")
def teacher_path_is_a_file(ctx):
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", ctx.out,
            "--teacher_path", ctx.write("teacher.bin", b"weights")]


@case("is a directory", "give the file itself")
def resume_from_a_directory(ctx):
    return ["--mode", "train_teacher", "--config", str(ctx.prev.config), "--output_dir", ctx.out,
            "--resume_from_checkpoint", str(ctx.prev.out / "checkpoints")]


@pytest.mark.parametrize("name", ["student", "checkpoints/student", "logs/run.log", "benchmark_results.json"])
def test_a_path_of_the_wrong_kind_inside_the_run_directory(name, tmp_path, request, capsys, monkeypatch):
    ctx = Ctx(tmp_path, request)
    run = ctx.copy_run()
    target = run / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.mkdir() if target.suffix else target.write_text("in the way\n")
    before = snapshot(run)
    code, err = run_in_process(resume(ctx, run), capsys, monkeypatch)
    assert not error_problems(code, err, ("is a file where", "is a directory where"), "move it away"), err
    assert changes(run, before, snapshot(run)) == []


def test_every_path_option_of_the_schema_is_checked_for_its_kind():
    """A new path option cannot be forgotten: every field named like a path is in settings.paths.PATHS."""
    import dataclasses
    import typing

    from settings import Config

    def fields(cls, prefix=""):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
            if dataclasses.is_dataclass(hint) or inner:
                nested = hint if dataclasses.is_dataclass(hint) else inner[0]
                many = typing.get_origin(hint) is list
                yield from fields(nested, f"{prefix}{f.name}{'[]' if many else ''}.")
            else:
                yield f"{prefix}{f.name}"
    named = {k for k in fields(Config) if k.endswith(("_file", "_dir", ".dir", "path", "name_or_path"))}
    assert named and named <= set(PATHS), named - set(PATHS)


# --------------------------------------------------------------------------- round 3, second look
def _mkfifo(ctx) -> str:
    import os
    path = ctx.tmp / "pipe"
    os.mkfifo(path)
    return str(path)


@case("is not a regular file", "give the file itself")
def resume_from_a_pipe(ctx):  # torch.load would wait on it for ever
    return ["--mode", "train_teacher", "--config", str(ctx.prev.config), "--output_dir", ctx.out,
            "--resume_from_checkpoint", _mkfifo(ctx)]


@case("is a broken symbolic link", "point it at an existing path")
def output_dir_a_broken_link(ctx):
    link = ctx.tmp / "gone"
    link.symlink_to(ctx.tmp / "nowhere")
    return ["--mode", "train_teacher", "--config", str(ctx.prev.config), "--output_dir", str(link)]


@case("config file not found", "--teacher_config")
def missing_teacher_section_file(ctx):
    return ["--config", str(ctx.prev.config), "--output_dir", ctx.out, "--teacher_config", str(ctx.tmp / "no.yaml")]


@case("has nothing to resume", "--overwrite")
def benchmark_mode_resumed(ctx):  # it would replace the reports without --overwrite
    run = ctx.copy_run()
    return ["--mode", "benchmark", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--teacher_path", str(run / "teacher/final"), "--resume_from_checkpoint", "auto"]


@case("holds a finished run of another config", "--overwrite")
def finished_pipeline_resumed_under_another_config(ctx):
    return ["--config", str(ctx.prev.config), "--output_dir", str(ctx.copy_run()), "--resume_from_checkpoint", "auto",
            "--set", "benchmark.num_beams=2"]


@case("is a file where the run keeps a directory", "move it away")
def a_file_where_the_swap_keeps_the_old_model(ctx):
    run = ctx.copy_run()
    (run / "student.old").write_text("x\n")
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(run), "--overwrite"]


@case("is a directory where the run writes a file", "move it away")
def training_summary_a_directory(ctx):
    run = unfinished_copy(ctx)
    (run / "student/training_summary.json").unlink()
    (run / "student/training_summary.json").mkdir()
    return resume(ctx, run)


@case("holds a model's weights only", "step_*.pt")
def resume_from_the_best_model(ctx):
    run = unfinished_copy(ctx)
    return resume(ctx, run, str(run / "checkpoints/student/best.pt"))


@case("this run exported", "delete that directory and rerun")
def damaged_export_of_this_run(ctx):
    run = ctx.copy_run()
    (run / "student/final/model.safetensors").write_bytes(b"\0" * 64)
    (run / "benchmark_results.json").unlink()
    return ["--mode", "benchmark", "--config", str(ctx.prev.config), "--output_dir", str(run)]


@case("tokenizer.train: a pretrained model reads the tokenizer", "set tokenizer.train to null")
def pretrained_teacher_with_a_tokenizer_to_train(ctx):
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", ctx.out,
            "--set", "teacher.init=pretrained", "--set", f"teacher.name_or_path={ctx.prev.out / 'teacher/final'}"]


@case("does not fit the configured student", "start a new run")
def checkpoint_with_weights_of_the_wrong_type(ctx):
    import torch
    run = unfinished_copy(ctx)
    ckpt = torch.load(run / STUDENT_CKPT, weights_only=True)
    del ckpt["crc32"]
    ckpt["weights"] = {"model": torch.zeros(3)}  # as a foreign tool might write it
    torch.save(ckpt, run / STUDENT_CKPT)
    return resume(ctx, run, str(run / STUDENT_CKPT))


@case("keeps the teacher's logits only", "remove distill.teacher_cache")
def full_pipeline_with_a_cache_and_hidden_losses(ctx):  # refused before the teacher trains
    return ["--config", str(ctx.prev.config), "--output_dir", ctx.out, "--set", "distill.teacher_cache={top_k: 4}",
            "--set", "distill.losses=[{name: hidden_mse, weight: 1.0}]"]


@case("a teacher with another tokenizer", "give the student the teacher's tokenizer")
def full_pipeline_with_another_student_tokenizer_and_pseudo_labels(ctx):
    return ["--config", str(ctx.prev.config), "--output_dir", ctx.out, "--set", "student.tokenizer.train.vocab_size=100",
            "--set", "distill.pseudo_labels={num_beams: 1}"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_in_one_line_before_anything_is_written(case: Case, tmp_path, request, capsys, monkeypatch):
    ctx = Ctx(tmp_path, request)
    argv = case.setup(ctx)
    before = {root: snapshot(root) for root in ctx.protected}
    run = run_subprocess if case.subprocess else lambda a, cwd: run_in_process(a, capsys, monkeypatch, cwd)
    code, stderr = run(argv, ctx.cwd)
    problems = error_problems(code, stderr, case.problem, case.fix)
    problems += [f"the message names a wrong fix: {a!r}" for a in case.absent if a in stderr]
    for root, snap in before.items():
        problems += changes(root, snap, snapshot(root))
    if Path(ctx.out).exists():
        problems.append(f"{ctx.out} was created: {sorted(p.name for p in Path(ctx.out).rglob('*'))}")
    assert not problems, "\n".join(problems) + "\n--- stderr ---\n" + stderr[-2000:]


# --------------------------------------------------------------------------- 5. finished work is never rewritten
def test_resuming_finished_stages_changes_nothing(tmp_path, request, capsys, monkeypatch):
    """distill_student --with_baseline --resume auto: the first call trains the missing baseline; after
    that every stage is finished, and neither mode exports, logs to a file or records anything again."""
    ctx = Ctx(tmp_path, request)
    run = ctx.copy_run()
    with_baseline = resume(ctx, run, "auto", "--with_baseline")
    assert run_in_process(with_baseline, capsys, monkeypatch)[0] == 0
    assert (run / "student_ce/final").is_dir()
    before = snapshot(run)
    for argv in (with_baseline, ["--mode", "train_teacher", "--config", str(ctx.prev.config), "--output_dir", str(run),
                                 "--resume_from_checkpoint", "auto"]):
        code, err = run_in_process(argv, capsys, monkeypatch)
        assert code == 0, err
        assert changes(run, before, snapshot(run)) == []


def test_auto_resume_passes_over_a_checkpoint_with_a_flipped_bit(tmp_path, request, capsys, monkeypatch):
    ctx = Ctx(tmp_path, request)
    run = unfinished_copy(ctx)
    steps = sorted((run / "checkpoints/student").glob("step_*.pt"))
    assert len(steps) >= 2
    flip_tensor_byte(steps[-1])
    code, err = run_in_process(resume(ctx, run), capsys, monkeypatch)
    assert code == 0, err
    log = (run / "logs/run.log").read_text()
    assert f"skipping {steps[-1].name}" in log and "is damaged" in log and f"resumed from {steps[-2]}" in log


def test_a_damaged_metrics_log_loses_only_its_damaged_lines(tmp_path, request, capsys, monkeypatch):
    ctx = Ctx(tmp_path, request)
    run = unfinished_copy(ctx)
    metrics = run / "student/metrics.jsonl"
    good = metrics.read_text().splitlines()
    metrics.write_bytes(("\n".join(good[:2]) + '\n{"step": 3, "lo\n\xff\xfe garbage\n[1, 2]\n').encode("latin-1"))
    steps = sorted((run / "checkpoints/student").glob("step_*.pt"))
    code, err = run_in_process(resume(ctx, run, str(steps[0])), capsys, monkeypatch)
    assert code == 0, err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r for r in records[:2]] == [json.loads(line) for line in good[:2]]
    assert records[-1]["step"] == 6


# --------------------------------------------------------------------------- exports and the log file
def test_an_export_does_not_depend_on_how_the_tokenizer_was_used(tmp_path, prev_run):
    """The saved tokenizer has no truncation or padding baked in (a longer input is not cut) and
    states the model's position limit; exporting again from a used tokenizer gives the same files."""
    from models import export, load_saved
    final = prev_run.out / "student/final"
    model, tok = load_saved(final, "student")
    long_text = " ".join(f"word{i}" for i in range(300))
    tok([long_text], truncation=True, max_length=12, padding="max_length")  # what training leaves behind
    again = export(model, tok, tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        assert (again / name).read_bytes() == (final / name).read_bytes(), name
    saved = json.loads((final / "tokenizer.json").read_text())
    assert saved["truncation"] is None and saved["padding"] is None
    _, reloaded = load_saved(final, "student")
    assert reloaded.model_max_length == model.config.max_position_embeddings
    ids = reloaded(long_text).input_ids
    assert len(ids) > model.config.max_position_embeddings  # not cut silently: the user decides
    assert len(reloaded(long_text, truncation=True).input_ids) == model.config.max_position_embeddings


def test_lines_logged_before_a_stage_commits_reach_the_run_log(tmp_path, prev_run, capsys, monkeypatch):
    cfg = json.loads(prev_run.config.read_text())
    cfg["data"]["synthetic"]["unlabeled_examples"] = 40
    cfg["distill"]["pseudo_labels"] = {"num_beams": 1, "max_new_tokens": 8}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    code, err = run_in_process(["--mode", "distill_student", "--config", path, "--output_dir", out,
                                "--teacher_path", prev_run.out / "teacher/final"], capsys, monkeypatch)
    assert code == 0, err
    log = (out / "logs/run.log").read_text()
    first_commit = log.index("student stage in")
    for line in ("data.synthetic task", "pseudo-labels: shard 1/", "pseudo-labels: training on"):
        assert -1 < log.find(line) < first_commit, line


def test_a_resume_onto_changed_data_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    """The same file path with more rows changes the run's step count: refused when the stage is prepared."""
    from conftest import TINY_CONFIG
    rows = lambda n: "source,target\n" + "".join(f"please say {i},say {i}\n" for i in range(n))  # noqa: E731
    data = tmp_path / "train.csv"
    data.write_text(rows(60))
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["data"] = {"train_file": str(data), "max_source_length": 40, "max_target_length": 40}
    cfg["training"]["teacher"].update(max_steps=None, epochs=2, eval_every=4)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    argv = ["--mode", "train_teacher", "--config", path, "--output_dir", out]
    assert run_in_process(argv, capsys, monkeypatch)[0] == 0
    shutil.rmtree(out / "teacher/final")  # as if stopped before its export
    data.write_text(rows(200))
    before = snapshot(out)
    code, err = run_in_process(argv + ["--resume_from_checkpoint", "auto"], capsys, monkeypatch)
    assert not error_problems(code, err, "belongs to a run of", "resume with the same data"), err
    assert changes(out, before, snapshot(out)) == []


def test_resuming_a_finished_pipeline_changes_nothing(tmp_path, request, capsys, monkeypatch):
    ctx = Ctx(tmp_path, request)
    run = ctx.copy_run()
    before = snapshot(run)
    code, err = run_in_process(["--config", str(ctx.prev.config), "--output_dir", str(run),
                                "--resume_from_checkpoint", "auto"], capsys, monkeypatch)
    assert code == 0, err
    assert changes(run, before, snapshot(run)) == []
