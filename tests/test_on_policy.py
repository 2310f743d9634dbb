"""On-policy distillation (issue 26): the student's samples as targets on a share of the micro-batches.

Checked: fraction 0 is today's run bit for bit; an on-policy micro-batch's labels are exactly the
student's samples and its loss is the divergence alone (against an independent float64 JSD); the
sampling leaves the training's RNG stream alone; replay buffer, adaptive share and their state; a
teacher with another tokenizer; kill -9 mid-run resumes bit-identically; torchrun; bad input.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from checkpoints import latest_checkpoint, load_checkpoint_file
from conftest import ROOT, TINY_CONFIG
from main import main
from test_bad_input import changes, error_problems, run_in_process, snapshot
from test_crash_safety import OFFLINE_ENV, wait_for

ON_POLICY = {"fraction": 0.5, "max_new_tokens": 8}
EPS32 = torch.finfo(torch.float32).eps


def config(tmp_path, name="config.json", on_policy=None, **student) -> str:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["training"]["num_threads"] = 1  # bitwise comparisons: one summation order
    cfg["training"]["student"].update(log_every=1, **student)
    if on_policy is not None:
        cfg["distill"]["on_policy"] = on_policy
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny trained teacher run directory (copied by each test that distills into it)."""
    tmp = tmp_path_factory.mktemp("op_teacher")
    assert main(["--mode", "train_teacher", "--config", config(tmp), "--output_dir", str(tmp / "run")]) == 0
    return tmp / "run"


def distill(cfg: str, out, *extra) -> int:
    return main(["--mode", "distill_student", "--config", cfg, "--output_dir", str(out), *map(str, extra)])


def with_teacher(teacher, out):
    shutil.copytree(teacher, out)
    return out


def final_weights(out):
    return load_checkpoint_file(latest_checkpoint(out / "checkpoints/student"))["weights"]["model"]


def records(out):
    return [r for r in map(json.loads, (out / "student/metrics.jsonl").read_text().splitlines()) if "loss" in r]


# --------------------------------------------------------------------------- fraction 0, and what a batch is
def test_fraction_zero_reproduces_the_off_policy_run_bit_for_bit(teacher, tmp_path):
    plain, zero = with_teacher(teacher, tmp_path / "plain"), with_teacher(teacher, tmp_path / "zero")
    assert distill(config(tmp_path, "a.json"), plain) == 0
    assert distill(config(tmp_path, "b.json", dict(ON_POLICY, fraction=0.0)), zero) == 0
    a, b = final_weights(plain), final_weights(zero)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert records(plain) == [{**r, "tokens_per_s": records(plain)[i]["tokens_per_s"]}
                              for i, r in enumerate(records(zero))]


def jsd64(student_logits, teacher_logits, beta=0.5):
    """GKD's generalized JSD per position, in float64, written out independently of distiller_zoo."""
    q, p = F.softmax(student_logits.double(), -1), F.softmax(teacher_logits.double(), -1)
    m = beta * p + (1 - beta) * q
    terms = beta * p * (p / m).log() + (1 - beta) * q * (q / m).log()
    return terms.sum(-1), terms.abs().sum()


@pytest.mark.parametrize("beta", [0.5, 0.2])  # 0.2: not symmetric, so a swapped teacher/student would show
def test_an_on_policy_micro_batch_is_the_students_samples_scored_by_the_teacher(beta, teacher, tmp_path,
                                                                                monkeypatch):
    """Step 1 of a run with fraction 1: the labels are exactly what the student samples for the sources
    (the same stream again gives the same ids), and the loss is sum of JSD over those tokens in float64,
    no cross-entropy; the training's own RNG stream is where it would be without the sampling."""
    from training import Trainer
    from training.on_policy import OnPolicy
    seen, real = [], Trainer.loss_sums

    def check(self, batch, objective=None):
        total, terms = real(self, batch, objective=objective)
        if not seen:
            student, live = copy.deepcopy(self.model).double().eval(), copy.deepcopy(self.teacher.model).double()
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
            with torch.no_grad():
                mask = batch["labels"] != -100
                ref, magnitude = jsd64(student(**inputs).logits[mask], live(**inputs).logits[mask], beta)
            seen.append((batch, objective, float(total), float(ref.sum()), float(magnitude)))
        return total, terms
    monkeypatch.setattr(Trainer, "loss_sums", check)
    samples, rng = [], []
    real_sample, real_batch = OnPolicy.sample, OnPolicy.batch

    def sample(self, collator, sources):
        rows = real_sample(self, collator, sources)
        samples.append((sources, rows))
        return rows

    def batch(self, *args):
        state = torch.get_rng_state()
        out = real_batch(self, *args)
        rng.append(torch.equal(state, torch.get_rng_state()))
        return out
    monkeypatch.setattr(OnPolicy, "sample", sample)
    monkeypatch.setattr(OnPolicy, "batch", batch)
    out = with_teacher(teacher, tmp_path / "run")
    jsd = [{"name": "jsd", "weight": 1.0, "beta": beta}]
    assert distill(config(tmp_path, on_policy=dict(ON_POLICY, fraction=1.0, losses=jsd)), out, "--set",
                   "student.arch.dropout=0.0") == 0
    batch, objective, total, ref, magnitude = seen[0]
    assert objective.prefix == "op_" and objective.ce_weight == 0
    sources, rows = samples[0]
    labels = [[t for t in row if t != -100] for row in batch["labels"].tolist()]
    assert labels == rows and len(rows) == len(sources)
    # float32 logits, softmaxes and sums against float64: a few ulps of every summed term's magnitude
    assert abs(total - ref) <= 16 * EPS32 * magnitude, (total, ref)
    assert rng and all(rng)  # sampling ran in a forked RNG: the training's stream did not move
    assert {"op_jsd", "op_batches", "op_gen_s"} <= set(records(out)[0]) and "ce" not in records(out)[0]


# --------------------------------------------------------------------------- replay buffer, adaptive share
class _Student(torch.nn.Module):
    """A stand-in whose generate counts calls and returns fixed ids (decoder start, 5, 6, eos, pad)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def generate(self, input_ids, attention_mask, generation_config):
        self.calls += 1
        return torch.tensor([[0, 5, 6, 2, 1]] * input_ids.shape[0])


def on_policy(**cfg):
    from settings.distill_config import OnPolicyConfig, ReplayConfig
    from training.on_policy import OnPolicy
    replay = cfg.pop("replay", None)
    op = OnPolicyConfig(**cfg, replay=replay and ReplayConfig(**replay))
    gen = SimpleNamespace(eos_token_id=2, max_new_tokens=4)
    return OnPolicy(op, _Student(), None, 7, torch.device("cpu"), SimpleNamespace(autocast=torch.no_grad), gen)


class _Collator:
    def encode_sources(self, sources):
        return {"input_ids": torch.ones(len(sources), 3, dtype=torch.long), "attention_mask": torch.ones(len(sources), 3)}

    def sampled_batch(self, sources, targets):
        return {"sources": sources, "targets": targets}


def test_the_replay_buffer_reuses_samples_keeps_the_newest_and_is_saved():
    op = on_policy(fraction=1.0, replay={"size": 6, "refresh": 0.0})
    pairs = [(f"s{i}", "t") for i in range(4)]
    batch, _, record = op.batch(_Collator(), pairs, 0, 0)
    assert batch["targets"] == [[5, 6, 2]] * 4 and record["op_replayed"] == 0 and op.model.calls == 1
    for step in range(1, 4):  # refresh 0: every later micro-batch draws from the buffer
        batch, _, record = op.batch(_Collator(), pairs, step, 0)
        assert record["op_replayed"] == 1 and op.model.calls == 1 and set(batch["sources"]) <= {s for s, _ in pairs}
    op.cfg.replay.refresh = 1.0
    op.batch(_Collator(), [(f"n{i}", "t") for i in range(4)], 9, 0)
    assert len(op.buffer) == 6 and [s for s, _ in op.buffer] == ["s2", "s3", "n0", "n1", "n2", "n3"]  # newest kept
    again = on_policy(fraction=1.0, replay={"size": 6, "refresh": 0.0})
    again.load_state_dict(json.loads(json.dumps(op.state_dict())))
    assert again.buffer == op.buffer
    op.cfg.replay.refresh = 0.0
    assert again.batch(_Collator(), pairs, 11, 0)[0] == op.batch(_Collator(), pairs, 11, 0)[0]  # same draw


def test_the_adaptive_share_rises_when_validation_stops_improving():
    op = on_policy(fraction=0.25, adaptive=True, adaptive_increment=0.1)
    shares = []
    for loss in (3.0, 2.0, 2.5, 2.4, 1.0, 1.5, 1.6):
        op.after_validation(loss)
        shares.append(round(op.share, 6))
    assert shares == [0.0, 0.0, 0.1, 0.2, 0.2, 0.25, 0.25]
    fresh = on_policy(fraction=0.25, adaptive=True)
    assert fresh.share == 0 and not any(fresh.chosen(s, m) for s in range(200) for m in range(2))


def test_which_micro_batches_are_on_policy_follows_the_fraction_and_the_seed():
    op = on_policy(fraction=0.3)
    chosen = [op.chosen(step, micro) for step in range(400) for micro in range(2)]
    assert abs(sum(chosen) / len(chosen) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(chosen))  # 4 sigma
    assert chosen == [on_policy(fraction=0.3).chosen(s, m) for s in range(400) for m in range(2)]


# --------------------------------------------------------------------------- another tokenizer
def test_a_teacher_with_another_tokenizer_reads_the_samples_as_text():
    from conftest import SHARED
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); it holds the GPT-2 and T5 tokenizers")
    from transformers import GPT2TokenizerFast, T5TokenizerFast
    from data_loader.batching import Seq2SeqCollator
    from data_loader.cross import CrossTokenizerCollator
    gpt2 = GPT2TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "gpt2"))
    gpt2.pad_token = gpt2.eos_token
    t5 = T5TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "t5"))
    collator = CrossTokenizerCollator(Seq2SeqCollator(t5, "fix: ", 32, 32), gpt2, True, "{prefix}{source}\n")
    pairs = [("you are a fool", "you are wrong"), ("shut up now", "please be quiet")]
    ids = [t5(text_target=t).input_ids for _, t in pairs]
    sampled, plain = collator.sampled_batch([s for s, _ in pairs], ids), collator(pairs)
    for key in plain:
        assert torch.equal(sampled[key], plain[key]), key
    odd = [ids[0][:1] + [t5.convert_tokens_to_ids("▁")] + ids[0][1:], ids[1]]  # a non-canonical sample
    batch = collator.sampled_batch([s for s, _ in pairs], odd)
    assert [t for t in batch["labels"][0].tolist() if t != -100] == odd[0]  # exactly the sampled ids
    assert len(collator._rows) == 2  # samples are not cached (each is new)


# --------------------------------------------------------------------------- kill -9, torchrun
def test_kill_9_mid_run_resumes_bit_identically(teacher, tmp_path):
    long = dict(max_steps=40, eval_every=10, save_total_limit=2)
    cfg = config(tmp_path, on_policy=dict(ON_POLICY, replay={"size": 40, "refresh": 0.5}), **long)
    straight, killed = with_teacher(teacher, tmp_path / "straight"), with_teacher(teacher, tmp_path / "killed")
    command = [sys.executable, str(ROOT / "main.py"), "--mode", "distill_student", "--config", cfg, "--output_dir"]
    assert subprocess.run(command + [str(straight)], env=OFFLINE_ENV, capture_output=True).returncode == 0
    proc = subprocess.Popen(command + [str(killed)], env=OFFLINE_ENV, stderr=subprocess.PIPE, text=True)
    metrics = killed / "student/metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 16, proc)
    proc.kill()
    assert proc.wait(timeout=60) == -9 and not (killed / "student/final").exists()  # stopped mid-run
    done = subprocess.run(command + [str(killed), "--resume_from_checkpoint", "auto"], env=OFFLINE_ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in (killed / "logs/run.log").read_text()
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_checkpoint_file(latest_checkpoint(killed / "checkpoints/student"))
    assert len(ckpt["on_policy_ranks"][0]["buffer"]) == 40
    assert [r["loss"] for r in records(straight)] == [r["loss"] for r in records(killed)]


def test_two_ranks_each_sample_their_own_share(teacher, tmp_path):
    out = with_teacher(teacher, tmp_path / "two")
    cfg = config(tmp_path, on_policy=dict(ON_POLICY, fraction=1.0, replay={"size": 16, "refresh": 1.0}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "main.py"), "--mode", "distill_student", "--config", cfg, "--output_dir",
                           str(out), "--set", "training.student.batch_size=4"],
                          env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)  # a hang guard
    assert proc.returncode == 0, proc.stderr[-3000:]
    buffers = [r["buffer"] for r in load_checkpoint_file(latest_checkpoint(out / "checkpoints/student"))
               ["on_policy_ranks"]]
    assert len(buffers) == 2 and all(buffers) and buffers[0] != buffers[1]  # each rank its own samples
    assert all(r["op_batches"] == 1 for r in records(out))


# --------------------------------------------------------------------------- bad input
BAD = [
    ("fraction=1.5", "fraction: must be in [0.0, 1.0]"), ("fraction=-0.1", "fraction: must be in [0.0, 1.0]"),
    ("temperature=0", "temperature: must be in (0, 100]"), ("temperature=-1", "temperature: must be in (0, 100]"),
    ("temperature=1e30", "temperature: must be in (0, 100]"), ("temperature=nan", "must be a finite number"),
    ("top_p=0", "top_p: must be in (0, 1]"), ("top_p=1.5", "top_p: must be in (0, 1]"),
    ("max_new_tokens=0", "max_new_tokens: must be > 0"),
    ("max_new_tokens=200", "cannot hold distill.on_policy.max_new_tokens"),
    ("replay.size=100000", "larger than the data"),
]


@pytest.mark.parametrize("setting, message", BAD, ids=[b[0] for b in BAD])
def test_bad_on_policy_settings_are_one_line_before_anything_is_written(setting, message, teacher, tmp_path,
                                                                         capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["--mode", "distill_student", "--config", config(tmp_path, on_policy=dict(ON_POLICY)), "--output_dir", out,
            "--teacher_path", teacher / "teacher/final", "--set", f"distill.on_policy.{setting}"]
    code, err = run_in_process(argv, capsys, monkeypatch)
    assert not error_problems(code, err, message, ""), err
    assert not out.exists()


def test_an_adaptive_share_without_validation_data_is_refused(teacher, tmp_path, capsys, monkeypatch):
    argv = ["--mode", "distill_student", "--config", config(tmp_path, on_policy=dict(ON_POLICY, adaptive=True)),
            "--output_dir", tmp_path / "out", "--teacher_path", teacher / "teacher/final",
            "--set", "data.split_ratios=[0.9, 0.0, 0.1]"]
    code, err = run_in_process(argv, capsys, monkeypatch)
    assert not error_problems(code, err, "the validation split is empty", "adaptive false"), err
    assert not (tmp_path / "out").exists()


def test_on_policy_with_a_teacher_cache_is_refused(tmp_path, capsys, monkeypatch):
    argv = ["--config", config(tmp_path, on_policy=dict(ON_POLICY)), "--output_dir", tmp_path / "out",
            "--set", "distill.teacher_cache.top_k=4"]
    code, err = run_in_process(argv, capsys, monkeypatch)
    assert not error_problems(code, err, "cannot score the student's new samples", "remove distill.teacher_cache"), err


@pytest.mark.parametrize("setting", ["fraction=0.7", "temperature=2", "replay.size=8", "top_k=5"])
def test_a_resume_that_changes_on_policy_settings_is_refused_untouched(setting, teacher, tmp_path, request, capsys,
                                                                       monkeypatch):
    out = with_teacher(teacher, tmp_path / "run")
    cfg = config(tmp_path, on_policy=dict(ON_POLICY, replay={"size": 16, "refresh": 0.5}), max_steps=3)
    assert distill(cfg, out) == 0
    shutil.rmtree(out / "student/final")  # as if stopped before its export
    before = snapshot(out)
    code, err = run_in_process(["--mode", "distill_student", "--config", cfg, "--output_dir", out,
                                "--resume_from_checkpoint", "auto", "--set", f"distill.on_policy.{setting}"],
                               capsys, monkeypatch)
    assert not error_problems(code, err, "a resume cannot change distill.on_policy", "--overwrite"), err
    assert changes(out, before, snapshot(out)) == []


def test_a_finished_stage_is_not_reused_under_another_objective(teacher, tmp_path, capsys, monkeypatch):
    """resume auto skips a finished stage only when the config is the one it was trained with."""
    out = with_teacher(teacher, tmp_path / "run")
    cfg = config(tmp_path, max_steps=3)
    assert distill(cfg, out) == 0
    before = snapshot(out)
    code, err = run_in_process(["--mode", "distill_student", "--config", cfg, "--output_dir", out,
                                "--resume_from_checkpoint", "auto", "--set", "distill.on_policy.fraction=0.5"],
                               capsys, monkeypatch)
    assert not error_problems(code, err, "a resume cannot change distill.on_policy", "--overwrite"), err
    assert changes(out, before, snapshot(out)) == []
