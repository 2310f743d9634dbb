"""Sequence-level KD: pseudo-labels and unlabeled transfer sets enter training as pairs, cached and resumable."""
from __future__ import annotations

import copy
import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import pseudo_labels as pl_mod
from checkpoints import load_checkpoint_file
from settings import Config, from_dict
from data_loader import load_splits, unlabeled_sources
from generation import generate_texts, generation_config
from main import main
from models import load_saved
from utils.errors import UserError
from utils.runtime import resolve_precision

PSEUDO = {"num_beams": 2, "max_new_tokens": 10, "batch_size": 8, "shard_size": 8}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny teacher trained for a few steps (module-scoped: trained once)."""
    from tests.conftest import TINY_CONFIG
    out = tmp_path_factory.mktemp("teacher")
    path = out / "config.json"
    path.write_text(json.dumps(TINY_CONFIG))
    assert main(["--mode", "train_teacher", "--config", str(path), "--output_dir", str(out)]) == 0
    return out / "teacher" / "final"


def make_run(cfg_dict, tmp_path):
    cfg = from_dict(Config, cfg_dict)
    return SimpleNamespace(cfg=cfg, splits=load_splits(cfg.data), unlabeled=unlabeled_sources(cfg.data),
                           output_dir=tmp_path, device=torch.device("cpu"),
                           precision=resolve_precision("fp32", torch.device("cpu")))


def unlabeled_csv(tmp_path, sources):
    path = tmp_path / "unlabeled.csv"
    pd.DataFrame({"text": sources + ["", sources[0]]}).to_csv(path, index=False)  # a blank and a repeat
    return str(path)


def counting_generate(monkeypatch):
    calls = []

    def wrapped(model, tok, sources, **kw):
        calls.append(list(sources))
        return generate_texts(model, tok, sources, **kw)
    monkeypatch.setattr(pl_mod, "generate_texts", wrapped)
    return calls


def test_pseudo_labels_are_the_teachers_outputs_cached_and_resumable(tiny_config_dict, teacher_dir, tmp_path,
                                                                     monkeypatch):
    extra = ["please send the report now", "you broke the build again"]
    tiny_config_dict["data"].update(unlabeled_file=unlabeled_csv(tmp_path, extra), unlabeled_column="text",
                                    max_train_samples=22)
    tiny_config_dict["distill"]["pseudo_labels"] = dict(PSEUDO)
    run = make_run(tiny_config_dict, tmp_path)
    teacher, tok = load_saved(teacher_dir, "teacher")
    calls = counting_generate(monkeypatch)

    pairs = pl_mod.pseudo_label_pairs(run, teacher, tok)
    sources = list(dict.fromkeys([e.source for e in run.splits.train] + extra))
    # the reference: every source decoded directly, with the same decoding settings
    gen = generation_config(dataclass_replace(run.cfg.benchmark, num_beams=2, max_new_tokens=10), teacher, tok)
    expected, _ = generate_texts(teacher, tok, sources, prefix="", max_source_length=40, gen_config=gen,
                                 batch_size=8, device="cpu", precision=run.precision)
    assert pairs == [(s, t) for s, t in zip(sources, expected) if t]
    assert {s for s, _ in pairs} >= set(extra)  # the transfer set is labelled and trained on
    decoded = [s for c in calls for s in c]
    assert sorted(decoded) == sorted(sources)  # each source decoded once, in length-sorted shards
    assert [len(c) for c in calls] == [8, 8, 8]
    assert [len(s) for c in calls for s in c] == sorted(len(s) for s in sources)

    # interrupted: one shard missing, one cut short; a rerun decodes exactly those two again
    directory = next(p for p in (tmp_path / "pseudo_labels").iterdir())
    shards = sorted(directory.glob("shard_*.json"))
    assert len(shards) == len(calls) and (directory / "manifest.json").is_file()
    redo = [json.loads(shards[i].read_text())["sources"] for i in (1, 2)]
    shards[1].unlink()
    shards[2].write_text(shards[2].read_text()[:20])
    calls.clear()
    assert pl_mod.pseudo_label_pairs(run, teacher, tok) == pairs
    assert calls == redo
    calls.clear()
    assert pl_mod.pseudo_label_pairs(run, teacher, tok) == pairs and calls == []  # all cached now

    # with the references too
    run.cfg.distill.pseudo_labels.targets = "both"
    both = pl_mod.pseudo_label_pairs(run, teacher, tok)
    refs = [(e.source, r) for e in run.splits.train for r in e.references]
    assert set(both) == set(refs) | set(pairs) and len(both) == len(set(both))


def dataclass_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


def test_fingerprint_covers_weights_tokenizer_sources_and_decoding(teacher_dir):
    teacher, tok = load_saved(teacher_dir, "teacher")
    from settings import BenchmarkConfig
    gen = generation_config(BenchmarkConfig(num_beams=2), teacher, tok)
    key = pl_mod.fingerprint(teacher, tok, ["a b", "c"], gen, "", 40)
    assert key == pl_mod.fingerprint(teacher, tok, ["a b", "c"], gen, "", 40)
    assert key != pl_mod.fingerprint(teacher, tok, ["c", "a b"], gen, "", 40)
    assert key != pl_mod.fingerprint(teacher, tok, ["a b", "c"], gen, "fix: ", 40)
    assert key != pl_mod.fingerprint(teacher, tok, ["a b", "c"], gen, "", 30)
    assert key != pl_mod.fingerprint(teacher, tok, ["a b", "c"],
                                     generation_config(BenchmarkConfig(num_beams=3), teacher, tok), "", 40)
    other_tok = copy.deepcopy(tok)
    other_tok.add_tokens(["zzz"])
    assert key != pl_mod.fingerprint(teacher, other_tok, ["a b", "c"], gen, "", 40)
    with torch.no_grad():
        next(teacher.parameters())[0, 0] += 1e-3
    assert key != pl_mod.fingerprint(teacher, tok, ["a b", "c"], gen, "", 40)


def test_student_resume_with_pseudo_labels_and_logit_kd_is_bit_identical(tiny_config_dict, write_config, tmp_path,
                                                                          teacher_dir):
    tiny_config_dict["training"]["student"].update(max_steps=6, eval_every=3, log_every=1,
                                                   gradient_accumulation_steps=2, save_total_limit=5)
    tiny_config_dict["distill"]["pseudo_labels"] = dict(PSEUDO, targets="both", cache_dir=str(tmp_path / "cache"))
    tiny_config_dict["data"]["max_train_samples"] = 24
    cfg = str(write_config(tiny_config_dict))
    extra = ["--teacher_path", str(teacher_dir)]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["--mode", "distill_student", "--config", cfg, "--output_dir", str(straight), *extra]) == 0
    assert list((tmp_path / "cache").glob("*/shard_00000.json"))
    ckpt3 = straight / "checkpoints/student/step_00000003.pt"
    (resumed / "checkpoints/student").mkdir(parents=True)
    shutil.copy(ckpt3, resumed / "checkpoints/student" / ckpt3.name)
    assert main(["--mode", "distill_student", "--config", cfg, "--output_dir", str(resumed), *extra,
                 "--resume_from_checkpoint", "auto"]) == 0
    a = load_checkpoint_file(straight / "checkpoints/student/step_00000006.pt")
    b = load_checkpoint_file(resumed / "checkpoints/student/step_00000006.pt")
    for name, tensor in a["weights"]["model"].items():
        assert torch.equal(tensor, b["weights"]["model"][name]), name
    record = json.loads((straight / "student/metrics.jsonl").read_text().splitlines()[0])
    assert "vanilla_kl" in record and "ce" in record  # logit KD on the pseudo-label targets


def test_transfer_set_config_errors(tiny_config_dict, write_config, tmp_path, capsys):
    tiny_config_dict["data"]["unlabeled_file"] = unlabeled_csv(tmp_path, ["a b c"])
    code = main(["--mode", "distill_student", "--config", str(write_config(tiny_config_dict)),
                 "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "data.unlabeled_file: sources without references are labelled by the teacher; set " \
                         "distill.pseudo_labels" in capsys.readouterr().err
    tiny_config_dict["distill"]["pseudo_labels"] = {"targets": "references"}
    assert main(["--mode", "distill_student", "--config", str(write_config(tiny_config_dict)),
                 "--output_dir", str(tmp_path / "o")]) == 2
    assert "distill.pseudo_labels.targets: 'references' is not one of 'teacher', 'both'" in capsys.readouterr().err
    cfg = from_dict(Config, dict(tiny_config_dict, distill={"pseudo_labels": {}}))
    with pytest.raises(UserError, match=r"no column 'source'; available columns: 'text'; set data.unlabeled_column"):
        unlabeled_sources(cfg.data)
    cfg.data.unlabeled_column = "text"
    assert unlabeled_sources(cfg.data) == ["a b c"]
