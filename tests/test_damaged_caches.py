"""Caches we wrote, later damaged: the teacher's top-K cache is rebuilt and pseudo-label shards are
decoded again, with a warning naming the file; a user's path of the wrong kind is one UserError line."""
from __future__ import annotations

import json
import logging
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distiller_zoo.cache as cache_module
import pseudo_labels as pl_mod
from data_loader import Seq2SeqCollator
from demo_data import generate
from distiller_zoo.cache import BINS, CachedTeacher, DamagedCache, open_cache
from main import main
from models import scratch_model, train_tokenizer
from settings import ArchConfig, TokenizerTrainConfig
from utils.errors import UserError

K, TEMPS = 4, [1.0, 2.0]


def one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message, message
    for part in parts:
        assert part in message, message


# ---------------------------------------------------------------------------------- teacher cache
@pytest.fixture(scope="module")
def tiny():
    pairs = [(e["source"], e["target"]) for e in generate("polite_rewrite", 16, seed=3)]
    tok = train_tokenizer([s for p in pairs for s in p], TokenizerTrainConfig(vocab_size=100))
    torch.manual_seed(0)
    teacher = scratch_model(ArchConfig(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, dropout=0.0),
                            tok).eval()
    return pairs, tok, teacher, Seq2SeqCollator(tok, "", 32, 32)


def opened(tiny, root):
    pairs, tok, teacher, collator = tiny
    return open_cache(root, teacher, tok, pairs, collator, K, TEMPS, len(tok))


def contents(cache: CachedTeacher) -> tuple:
    return np.array(cache.ids), np.array(cache.logp), np.array(cache.tail), cache.index


@pytest.fixture(scope="module")
def fresh(tiny, tmp_path_factory):
    """One built entry: the reference each rebuild must equal."""
    root = tmp_path_factory.mktemp("fresh")
    cache = opened(tiny, root)
    return root, cache.entry.name, contents(cache)


def _edit_json(path, **change):
    """Rewrite a JSON object file with ``change`` applied (a DROP value deletes its key)."""
    data = json.loads(path.read_text())
    data.update(change)
    for key in [k for k, v in change.items() if v is DROP]:
        del data[key]
    path.write_text(json.dumps(data))


DROP = object()
FILE_DAMAGE = {  # damage any file of ours can suffer
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(max(p.stat().st_size, 64))),
    "truncated to a third": lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 3]),
    "empty": lambda p: p.write_bytes(b""),
    "missing": lambda p: p.unlink(),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
    "one byte too many": lambda p: p.write_bytes(p.read_bytes() + b"\0"),
    "a flipped byte, same size": lambda p: p.write_bytes(_flip(p.read_bytes())),
}
META_DAMAGE = {  # valid JSON of the wrong structure or values
    "a list": lambda p: p.write_text("[1, 2]"),
    "a number": lambda p: p.write_text("3"),
    "null": lambda p: p.write_text("null"),
    "deeply nested": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    "no fingerprint (an older entry)": lambda p: _edit_json(p, fingerprint=DROP),
    "no sha256 (an older entry)": lambda p: _edit_json(p, sha256=DROP),
    "another fingerprint": lambda p: _edit_json(p, fingerprint="0" * 24),
    "rows a string": lambda p: _edit_json(p, rows="12"),
    "rows negative": lambda p: _edit_json(p, rows=-1),
    "rows one more": lambda p: _edit_json(p, rows=json.loads(p.read_text())["rows"] + 1),
    "rows a bool": lambda p: _edit_json(p, rows=True),
    "top_k zero": lambda p: _edit_json(p, top_k=0),
    "top_k other": lambda p: _edit_json(p, top_k=K + 1),
    "id_dtype unknown": lambda p: _edit_json(p, id_dtype="float64"),
    "id_dtype too wide for the vocabulary": lambda p: _edit_json(p, id_dtype="int32"),
    "temperatures other": lambda p: _edit_json(p, temperatures=[1.0]),
    "temperatures strings": lambda p: _edit_json(p, temperatures=["1.0", "2.0"]),
    "vocab_size other": lambda p: _edit_json(p, vocab_size=7),
    "index a list": lambda p: _edit_json(p, index=[]),
    "index span past the rows": lambda p: _edit_json(p, index={"k": [0, 10 ** 9]}),
    "index span not a pair": lambda p: _edit_json(p, index={"k": 3}),
    "index span negative": lambda p: _edit_json(p, index={"k": [-1, 1]}),
    "sha256 of another file": lambda p: _edit_json(p, sha256=dict(json.loads(p.read_text())["sha256"], **{"ids.bin": "0"})),
}


SHAPES_OF_THE_BINS = {"rows one more", "top_k other", "sha256 of another file"}


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


CASES = [(f, d) for f in ("meta.json", *BINS) for d in FILE_DAMAGE] + [("meta.json", d) for d in META_DAMAGE]


@pytest.mark.parametrize("file,damage", CASES, ids=[f"{f}-{d}" for f, d in CASES])
def test_a_damaged_entry_is_rebuilt_with_a_warning_naming_the_file(tiny, fresh, tmp_path, caplog, file, damage):
    root, name, expected = fresh
    shutil.copytree(root, tmp_path / "cache")
    entry = tmp_path / "cache" / name
    (FILE_DAMAGE | META_DAMAGE)[damage](entry / file)
    with caplog.at_level(logging.WARNING, logger="kd"):
        cache = opened(tiny, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is damaged (" in warnings[0] and f"; rebuilding {entry}" in warnings[0]
    named = "ids.bin" if damage in SHAPES_OF_THE_BINS else file   # meta.json then disagrees with the first .bin
    assert f"teacher cache: {entry / named} is damaged" in warnings[0], warnings[0]
    got = contents(cache)
    for a, b in zip(got[:3], expected[:3]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert got[3] == expected[3]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [name]   # nothing aside, nothing half-built
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kd"):
        assert contents(opened(tiny, tmp_path / "cache"))[3] == expected[3]   # the rebuilt entry is reused
    assert not caplog.records


def test_a_damaged_entry_read_directly_is_a_one_line_error(fresh, tmp_path):
    root, name, _ = fresh
    shutil.copytree(root / name, tmp_path / name)
    (tmp_path / name / "ids.bin").write_bytes(b"\0\0\0")
    with pytest.raises(DamagedCache) as e:
        CachedTeacher(tmp_path / name)
    assert isinstance(e.value, UserError)
    one_line_error(e, f"{tmp_path / name / 'ids.bin'} is damaged (3 bytes where", f"delete {tmp_path / name}")


def test_a_damaged_entry_that_cannot_be_removed_is_a_one_line_error(tiny, fresh, tmp_path, monkeypatch):
    root, name, _ = fresh
    shutil.copytree(root, tmp_path / "cache")
    (tmp_path / "cache" / name / "tail.bin").write_bytes(b"")

    def refuse(*a):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(UserError) as e:
        opened(tiny, tmp_path / "cache")
    one_line_error(e, "tail.bin is damaged", "cannot be removed (Permission denied)", "distill.teacher_cache.dir")


def test_user_paths_of_the_wrong_kind_are_one_line_errors(tiny, fresh, tmp_path):
    _, name, _ = fresh
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError) as e:
        opened(tiny, tmp_path / "a_file")
    one_line_error(e, f"distill.teacher_cache.dir {tmp_path / 'a_file'} is a file, not a directory")
    with pytest.raises(UserError) as e:
        opened(tiny, tmp_path / "a_file" / "below")
    one_line_error(e, "cannot create", "set distill.teacher_cache.dir to a writable directory")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / name).write_text("not an entry")
    with pytest.raises(UserError) as e:
        opened(tiny, tmp_path / "root")
    one_line_error(e, f"{tmp_path / 'root' / name} is a file where a cache entry (a directory) belongs")
    assert (tmp_path / "root" / name).read_text() == "not an entry"   # the user's file is left alone


def test_reading_an_example_the_entry_lacks_or_ids_outside_the_vocabulary_is_refused(tiny, fresh, tmp_path):
    pairs, tok, teacher, collator = tiny
    root, name, _ = fresh
    shutil.copytree(root, tmp_path / "cache")
    cache = opened(tiny, tmp_path / "cache")
    with pytest.raises(UserError) as e:
        cache.targets(collator([("a source", "never seen in training")]))
    one_line_error(e, "holds no rows for a training example", f"delete {cache.entry} to rebuild it")
    with open(cache.entry / "ids.bin", "r+b") as f:   # changed under an open reader: the map sees it
        f.write(np.full(K, np.iinfo(np.uint16).max, np.uint16).tobytes())
    first = next(k for k, v in cache.index.items() if v[0] == 0)
    batch = next(collator([p]) for p in pairs if cache_module.example_keys(collator([p]))[0] == first)
    with pytest.raises(UserError) as e:
        cache.targets(batch)
    one_line_error(e, f"{cache.entry / 'ids.bin'} holds token ids outside [0, {len(tok)})", "delete")


# ------------------------------------------------------------------------------ pseudo-label shards
SOURCES = [f"source number {i} " + "x" * i for i in range(10)]
GEN = SimpleNamespace(to_dict=lambda: {"num_beams": 1})


@pytest.fixture
def decoding(monkeypatch):
    """generate_texts replaced by a pure function of the sources, recording what it decodes."""
    calls = []

    def fake(model, tok, sources, **kw):
        calls.append(list(sources))
        return [s.upper() for s in sources], None
    monkeypatch.setattr(pl_mod, "generate_texts", fake)
    return calls


def label(directory):
    return pl_mod.label_sources(None, None, SOURCES, directory, gen_config=GEN, prefix="", max_source_length=40,
                                batch_size=4, shard_size=4, device="cpu", precision=None)




SHARD_DAMAGE = {k: v for k, v in FILE_DAMAGE.items() if k not in ("missing", "a directory")} | {
    "not UTF-8 inside JSON": lambda p: p.write_bytes(b'{"sources": ["\xff"]}'),
    "a list": lambda p: p.write_text("[]"),
    "a number": lambda p: p.write_text("1"),
    "a string": lambda p: p.write_text('"sources"'),
    "deeply nested": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    "sources missing": lambda p: _edit_json(p, sources=DROP),
    "outputs missing": lambda p: _edit_json(p, outputs=DROP),
    "sources a string": lambda p: _edit_json(p, sources="abc"),
    "outputs a dict": lambda p: _edit_json(p, outputs={"a": 1}),
    "outputs numbers": lambda p: _edit_json(p, outputs=[1, 2, 3, 4]),
    "outputs with null": lambda p: _edit_json(p, outputs=["a", None, "b", "c"]),
    "outputs shorter": lambda p: _edit_json(p, outputs=["a"]),
    "other sources": lambda p: _edit_json(p, sources=["a", "b", "c", "d"]),
    "another fingerprint": lambda p: _edit_json(p, fingerprint="0" * 20),
}


@pytest.mark.parametrize("shard", ["shard_00000.json", "shard_00002.json"])
@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_a_damaged_shard_is_decoded_again_with_a_warning_naming_it(decoding, tmp_path, caplog, shard, damage):
    reference = label(tmp_path / "fresh" / "fp")
    directory = tmp_path / "cache" / "fp"
    label(directory)
    before = (directory / shard).read_bytes()
    SHARD_DAMAGE[damage](directory / shard)
    decoding.clear()
    with caplog.at_level(logging.WARNING, logger="kd"):
        assert label(directory) == reference
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{directory / shard} " in warnings[0] and "decoding that shard again" in warnings[0]
    assert decoding == [json.loads(before)["sources"]]   # that shard alone, decoded again
    assert (directory / shard).read_bytes() == before      # and written as a fresh run writes it


def test_a_shard_without_a_fingerprint_is_still_used(decoding, tmp_path):
    directory = tmp_path / "fp"
    reference = label(directory)
    _edit_json(directory / "shard_00001.json", fingerprint=DROP)   # written before shards recorded it
    decoding.clear()
    assert label(directory) == reference and decoding == []


@pytest.mark.parametrize("where", ["cache_dir is a file", "fingerprint dir is a file", "shard is a directory",
                                   "manifest is a directory"])
def test_pseudo_label_paths_of_the_wrong_kind_are_one_line_errors(decoding, tmp_path, where):
    cache = tmp_path / "cache"
    if where == "cache_dir is a file":
        cache.write_text("x")
        bad, part = cache, "is a file where the cache needs a directory"
    elif where == "fingerprint dir is a file":
        cache.mkdir()
        (cache / "fp").write_text("x")
        bad, part = cache / "fp", "is a file where the cache needs a directory"
    else:
        name = "shard_00001.json" if where == "shard is a directory" else "manifest.json"
        (cache / "fp" / name).mkdir(parents=True)
        bad, part = cache / "fp" / name, "is a directory where the cache keeps a file"
    with pytest.raises(UserError) as e:
        label(cache / "fp")
    one_line_error(e, f"pseudo-labels: {bad} {part}", "distill.pseudo_labels.cache_dir")


# ------------------------------------------------------------------------------------ end to end
def test_a_cache_damaged_between_two_runs_is_rebuilt_and_the_run_succeeds(tiny_config_dict, write_config, tmp_path,
                                                                          capsys):
    tiny_config_dict["training"]["teacher"]["max_steps"] = 1
    tiny_config_dict["training"]["student"].update(max_steps=2, eval_every=2)
    tiny_config_dict["data"]["synthetic"]["num_examples"] = 40
    cfg = write_config(tiny_config_dict)
    assert main(["--mode", "train_teacher", "--config", str(cfg), "--output_dir", str(tmp_path / "t")]) == 0
    tiny_config_dict["distill"]["teacher_cache"] = {"top_k": 4, "dir": str(tmp_path / "cache")}
    cfg = write_config(tiny_config_dict, "cached.json")
    run = ["--mode", "distill_student", "--config", str(cfg), "--teacher_path", str(tmp_path / "t/teacher/final")]
    assert main([*run, "--output_dir", str(tmp_path / "one")]) == 0
    (entry,) = (tmp_path / "cache").iterdir()
    ids = entry / "ids.bin"
    ids.write_bytes(ids.read_bytes()[:ids.stat().st_size // 3])
    capsys.readouterr()
    assert main([*run, "--output_dir", str(tmp_path / "two")]) == 0
    out = capsys.readouterr()
    assert f"teacher cache: {ids} is damaged (" in out.out and f"; rebuilding {entry}" in out.out
    assert "Traceback" not in out.err
    assert CachedTeacher(entry).index   # the rebuilt entry validates
