"""The teacher cache (top-K on disk) and the fused path end to end: exact resume, config errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from checkpoints import load_checkpoint_file
from settings import ArchConfig, TokenizerTrainConfig
from data_loader import Seq2SeqCollator
from demo_data import generate
from distiller_zoo.cache import CachedTeacher, build_cache, example_keys, open_cache, top_k_rows
from distiller_zoo.teacher import LiveTeacher
from main import main
from models import scratch_model, train_tokenizer
from utils.errors import UserError


@pytest.fixture(scope="module")
def tiny():
    pairs = [(e["source"], e["target"]) for e in generate("polite_rewrite", 40, seed=5)]
    tok = train_tokenizer([s for p in pairs for s in p], TokenizerTrainConfig(vocab_size=120))
    torch.manual_seed(0)
    teacher = scratch_model(ArchConfig(d_model=32, heads=2, d_ff=64, encoder_layers=1, decoder_layers=1, dropout=0.0),
                            tok).eval()
    return pairs, tok, teacher, Seq2SeqCollator(tok, "", 40, 40)


def test_cache_answers_any_batching_with_the_live_teachers_top_k(tiny, tmp_path):
    pairs, tok, teacher, collator = tiny
    cache = open_cache(tmp_path, teacher, tok, pairs + pairs[:3], collator, 6, [1.0, 2.0], len(tok))  # 3 repeats
    batch = collator(pairs[7:2:-1])                    # another batching and order than the build's
    got = cache.targets(batch)
    live = LiveTeacher(teacher, len(tok)).targets(batch)
    assert got.n == live.n == int((batch["labels"] != -100).sum())
    ids, logp, tail = top_k_rows(live.chunk(0, live.n), 6, [1.0, 2.0])
    sparse = got.chunk(0, got.n)
    assert torch.equal(sparse.ids, ids)
    torch.testing.assert_close(sparse.logp, logp)
    torch.testing.assert_close(sparse.tail[2.0], tail[:, 1])
    # the tail is the mass outside the K ids: K probabilities + tail = 1 at every temperature
    for t in (1.0, 2.0):
        log_p_k, log_rest = sparse.at_temperature(t)
        torch.testing.assert_close(log_p_k.exp().sum(-1) + log_rest.exp(), torch.ones(got.n))
        full = (live.chunk(0, live.n).float() / t).log_softmax(-1).gather(-1, ids)
        torch.testing.assert_close(log_p_k, full, rtol=1e-5, atol=1e-5)
    # repeated pairs are stored once; disk = rows x (K ids uint16 + K float32 + one float32 per temperature)
    meta = json.loads((cache.entry / "meta.json").read_text())
    rows = sum(int((collator([p])["labels"] != -100).sum()) for p in dict.fromkeys(pairs))
    assert meta["rows"] == rows and len(meta["index"]) == len(set(pairs))
    size = sum(f.stat().st_size for f in cache.entry.glob("*.bin"))
    assert size == rows * (6 * 2 + 6 * 4 + 2 * 4)


def test_fingerprint_separates_what_the_numbers_depend_on(tiny, tmp_path):
    pairs, tok, teacher, collator = tiny
    a = open_cache(tmp_path, teacher, tok, pairs, collator, 4, [1.0], len(tok)).entry
    mtime = (a / "meta.json").stat().st_mtime_ns
    assert open_cache(tmp_path, teacher, tok, pairs, collator, 4, [1.0], len(tok)).entry == a   # reused
    assert (a / "meta.json").stat().st_mtime_ns == mtime
    others = {open_cache(tmp_path, teacher, tok, pairs, collator, 5, [1.0], len(tok)).entry,          # K
              open_cache(tmp_path, teacher, tok, pairs, collator, 4, [2.0], len(tok)).entry,          # temperature
              open_cache(tmp_path, teacher, tok, pairs[:-1] + [(pairs[-1][0], "other")], collator, 4, [1.0],
                         len(tok)).entry,                                                            # pairs' content
              open_cache(tmp_path, teacher, tok, pairs, Seq2SeqCollator(tok, "p: ", 40, 40), 4, [1.0],
                         len(tok)).entry}                                                            # prefix
    with torch.no_grad():
        changed = scratch_model(ArchConfig(d_model=32, heads=2, d_ff=64, encoder_layers=1, decoder_layers=1), tok)
    others.add(open_cache(tmp_path, changed, tok, pairs, collator, 4, [1.0], len(tok)).entry)         # weights
    assert len(others) == 5 and a not in others


def test_an_interrupted_build_leaves_no_entry(tiny, tmp_path):
    pairs, tok, teacher, collator = tiny
    calls = []

    def failing(batch_pairs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return collator(batch_pairs)
    failing.prefix, failing.max_source_length, failing.max_target_length = "", 40, 40
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "entry", teacher, pairs, failing, 4, [1.0], len(tok), batch_size=8)
    assert not (tmp_path / "entry").exists()
    build_cache(tmp_path / "entry", teacher, pairs, collator, 4, [1.0], len(tok), batch_size=8)
    assert CachedTeacher(tmp_path / "entry").targets(collator(pairs[:2])).n > 0
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]   # the half-written attempt is gone


def test_a_batch_the_cache_does_not_hold_is_refused(tiny, tmp_path):
    pairs, tok, teacher, collator = tiny
    cache = open_cache(tmp_path, teacher, tok, pairs[:5], collator, 4, [1.0], len(tok))
    assert len(set(example_keys(collator(pairs[:5])))) == 5
    with pytest.raises(UserError, match=r"holds no rows for a training example .*; delete .* to rebuild it") as e:
        cache.targets(collator(pairs[5:7]))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------- end to end
def _resume_is_exact(cfg_path, tmp_path, extra, role="student"):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["--mode", "distill_student", "--config", cfg_path, "--output_dir", str(straight), *extra]) == 0
    ckpt3 = straight / "checkpoints" / role / "step_00000003.pt"
    (resumed / "checkpoints" / role).mkdir(parents=True)
    shutil.copy(ckpt3, resumed / "checkpoints" / role / ckpt3.name)
    assert main(["--mode", "distill_student", "--config", cfg_path, "--output_dir", str(resumed), *extra,
                 "--resume_from_checkpoint", "auto"]) == 0
    a = load_checkpoint_file(straight / "checkpoints" / role / "step_00000008.pt")["weights"]["model"]
    b = load_checkpoint_file(resumed / "checkpoints" / role / "step_00000008.pt")["weights"]["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    return a


@pytest.fixture
def teacher_run(tiny_config_dict, write_config, tmp_path):
    for role in ("teacher", "student"):
        tiny_config_dict["training"][role].update(max_steps=8, eval_every=3, log_every=1,
                                                  gradient_accumulation_steps=2, save_total_limit=5)
    tiny_config_dict["training"]["teacher"]["max_steps"] = 2
    cfg = write_config(tiny_config_dict)
    assert main(["--mode", "train_teacher", "--config", str(cfg), "--output_dir", str(tmp_path / "t")]) == 0
    return tiny_config_dict, ["--teacher_path", str(tmp_path / "t/teacher/final")]


def test_fused_path_with_many_chunks_resumes_bit_identically(teacher_run, write_config, tmp_path):
    cfg, extra = teacher_run
    cfg["distill"]["chunk_size"] = 7   # many chunks per micro-batch
    weights = _resume_is_exact(str(write_config(cfg, "fused.json")), tmp_path / "fused", extra)
    assert weights   # (the helper asserts the resumed weights equal the straight run's, tensor by tensor)


def test_cached_teacher_trains_resumes_exactly_and_later_runs_reuse_it(teacher_run, write_config, tmp_path, monkeypatch):
    cfg, extra = teacher_run
    cfg["distill"]["teacher_cache"] = {"top_k": 8, "dir": str(tmp_path / "cache")}
    cfg["distill"]["losses"] = [{"name": "jsd", "weight": 0.5, "temperature": 2.0}]
    path = str(write_config(cfg, "cached.json"))
    import distiller_zoo.cache as cache_module
    builds = []
    monkeypatch.setattr(cache_module, "build_cache", lambda *a, **k: builds.append(1) or build_cache(*a, **k))
    weights = _resume_is_exact(path, tmp_path / "cached", extra)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    assert builds == [1]   # the teacher ran once; the resumed run read the cache
    live = dict(cfg, distill=dict(cfg["distill"], teacher_cache=None))
    assert main(["--mode", "distill_student", "--config", str(write_config(live, "live.json")), "--output_dir",
                 str(tmp_path / "live"), *extra]) == 0
    live_w = load_checkpoint_file(tmp_path / "live/checkpoints/student/step_00000008.pt")["weights"]["model"]
    assert any(not torch.equal(weights[n], live_w[n]) for n in weights)   # the sparse teacher is another objective


@pytest.mark.parametrize("override,message", [
    ("distill.losses=[{\"name\": \"vanilla_kl\", \"temperature\": Infinity}]", "temperature: must be a finite number"),
    ("distill.chunk_size=-1", "chunk_size: must be >= 0"),
])
def test_bad_distill_settings_are_one_line_errors(tiny_config_dict, write_config, tmp_path, capsys, override,
                                                  message):
    key, value = override.split("=", 1)
    section, field = key.split(".")
    tiny_config_dict[section][field] = json.loads(value)
    cfg = write_config(tiny_config_dict)
    assert main(["--mode", "distill_student", "--config", str(cfg), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_cache_with_a_hidden_state_loss_is_refused(tiny_config_dict, write_config, tmp_path, capsys):
    tiny_config_dict["distill"].update(teacher_cache={"top_k": 4},
                                       losses=[{"name": "hidden_mse", "weight": 1.0}])
    cfg = write_config(tiny_config_dict)
    assert main(["--mode", "distill_student", "--config", str(cfg), "--output_dir", str(tmp_path / "o")]) == 2
    assert "distill.teacher_cache keeps the teacher's logits only" in capsys.readouterr().err
