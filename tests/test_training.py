"""The training loop: token-normalised accumulation, exact resume, mixed precision, numerical faults."""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import pytest
import torch

from settings import ArchConfig, BenchmarkConfig, OptimConfig, TokenizerTrainConfig
from data_loader import Example, Seq2SeqCollator
from demo_data import generate
from distiller_zoo import Objective, build_loss
from main import main
from models import scratch_model, train_tokenizer
from checkpoints import load_checkpoint_file
from training import Trainer, TrainJob
from utils.errors import UserError
from utils.runtime import resolve_precision


def make_trainer(tmp_path, precision="fp32", accum=1, batch_size=8, dropout=0.0, n=48, **optim_extra):
    pairs = [(e["source"], e["target"]) for e in generate("polite_rewrite", n, seed=3)]
    tok = train_tokenizer([s for p in pairs for s in p], TokenizerTrainConfig(vocab_size=120))
    torch.manual_seed(0)
    model = scratch_model(ArchConfig(d_model=32, heads=2, d_ff=64, encoder_layers=1, decoder_layers=1,
                                     dropout=dropout), tok)
    optim = OptimConfig(max_steps=4, batch_size=batch_size, gradient_accumulation_steps=accum, max_grad_norm=None,
                        warmup_ratio=0.0, learning_rate=1e-3, **optim_extra)
    job = TrainJob(role="teacher", optim=optim, train_pairs=pairs, val_examples=[Example(pairs[0][0], [pairs[0][1]])],
                   collator=Seq2SeqCollator(tok, "", 40, 40), run_dir=tmp_path, checkpoint_dir=tmp_path / "ckpt",
                   device=torch.device("cpu"), precision=resolve_precision(precision, torch.device("cpu")), seed=0,
                   config={}, generation=BenchmarkConfig())
    return Trainer(job, model, tok), pairs


def captured_grads(trainer, window):
    """Gradients the optimizer would apply for one window (captured before the update)."""
    grads = {}

    def capture(*args, **kwargs):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    trainer.optimizer.step = capture
    trainer.train_step(window)
    return grads


def test_unequal_micro_batches_give_the_gradient_of_one_big_batch(tmp_path):
    trainer, pairs = make_trainer(tmp_path)
    # sort so that the two micro-batches have very different target lengths (and token counts)
    ordered = sorted(pairs[:8], key=lambda p: len(p[1]))
    whole = captured_grads(trainer, [ordered])
    split = captured_grads(trainer, [ordered[:2], ordered[2:]])
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
    # precondition: the micro-batches hold different token counts, so a per-micro-batch mean would differ
    short, long = ordered[:2], ordered[2:]
    n_short = sum(len(trainer.tokenizer(t).input_ids) for _, t in short)
    n_long = sum(len(trainer.tokenizer(t).input_ids) for _, t in long)
    assert n_short != n_long


def test_window_order_is_a_function_of_seed_and_epoch(tmp_path):
    trainer, pairs = make_trainer(tmp_path, accum=2, batch_size=5)
    assert trainer.micro_batches == 10 and trainer.windows_per_epoch == 5
    epoch0 = [p for w in range(5) for mb in trainer.window_batches(0, w) for p in mb]
    assert sorted(epoch0) == sorted(pairs)  # every pair exactly once per epoch
    again, _ = make_trainer(tmp_path, accum=2, batch_size=5)
    assert again.window_batches(1, 2) == trainer.window_batches(1, 2)
    assert trainer.window_batches(1, 0) != trainer.window_batches(0, 0)


def test_copy_warmup_turns_a_seeded_share_of_pairs_into_source_source_then_stops(tmp_path):
    trainer, pairs = make_trainer(tmp_path, accum=2, batch_size=4, autoencode_steps=7, autoencode_fraction=0.5)
    plain, _ = make_trainer(tmp_path, accum=2, batch_size=4)
    assert trainer.windows_per_epoch == 6  # steps 0-5 in epoch 0, step 6 is epoch 1's first window
    sources = {s: t for s, t in pairs}
    for epoch, window in [(0, 0), (0, 5), (1, 0)]:
        warm, real = trainer.window_batches(epoch, window), plain.window_batches(epoch, window)
        got = [p for mb in warm for p in mb]
        want = [p for mb in real for p in mb]
        assert [s for s, _ in got] == [s for s, _ in want]  # the same order, only some targets replaced
        assert all(t == sources[s] or t == s for s, t in got)
    epoch0 = [p for w in range(6) for mb in trainer.window_batches(0, w) for p in mb]
    copied = sum(s == t for s, t in epoch0)
    assert sorted(s for s, _ in epoch0) == sorted(s for s, _ in pairs)
    assert 0.3 * len(pairs) < copied < 0.7 * len(pairs)  # about autoencode_fraction of them
    again, _ = make_trainer(tmp_path, accum=2, batch_size=4, autoencode_steps=7, autoencode_fraction=0.5)
    assert again.window_batches(0, 3) == trainer.window_batches(0, 3)  # fixed by (seed, epoch): resume-safe
    assert trainer.window_batches(1, 1) == plain.window_batches(1, 1)  # step 7: the warm-up is over
    with pytest.raises(ValueError, match="autoencode_fraction"):
        OptimConfig(autoencode_fraction=1.5)


def test_random_copy_steps_train_on_copies_with_cross_entropy_then_the_pairs(tmp_path):
    """random_copy_steps: the first N steps' micro-batches are random-token copies (CE alone), a pure
    function of (seed, step, micro-batch); from step N on, the training pairs as without them."""
    trainer, pairs = make_trainer(tmp_path, accum=2, batch_size=4, random_copy_steps=2, random_copy_length=6)
    seen = []

    def record(batch, objective=None):
        seen.append((batch, objective))
        return real(batch, objective=objective)
    real, trainer.loss_sums = trainer.loss_sums, record
    for _ in range(3):
        trainer.train_step(trainer.window_batches(trainer.state.epoch, trainer.state.window))
        trainer._advance()
    assert len(seen) == 6 and all(o is None for _, o in seen)  # 2 steps x 2 micro-batches copy, then pairs: CE
    for batch, _ in seen[:4]:
        assert batch["input_ids"].shape == (4, 6 + 1) and bool(batch["attention_mask"].all())  # + end of sequence
        assert torch.equal(batch["input_ids"], batch["labels"])  # this tokenizer frames both sides alike
    assert not torch.equal(seen[0][0]["input_ids"], seen[1][0]["input_ids"])
    third = trainer.job.collator(trainer.window_batches(0, 2)[0])
    assert torch.equal(seen[4][0]["labels"], third["labels"])  # step 3: the data order's own pairs
    again, _ = make_trainer(tmp_path, accum=2, batch_size=4, random_copy_steps=2, random_copy_length=6)
    again.state.step = 1
    assert torch.equal(again._random_copies(0, 4)["input_ids"], seen[2][0]["input_ids"])  # resume-safe
    with pytest.raises(ValueError, match="random_copy_length"):
        OptimConfig(random_copy_length=0)
    with pytest.raises(UserError, match=r"^training.teacher.random_copy_length 40 does not fit data.max_source_length"):
        make_trainer(tmp_path, random_copy_steps=2, random_copy_length=40)


def test_loss_parts_a_step_does_not_train_are_left_alone(tmp_path):
    """On the CE-only random-copy steps the loss's own parameters (feature projections) are not
    trained: their gradient is None at the optimizer step, so AdamW skips them (a zero gradient would
    still move them on momentum and weight decay). Under DDP they first get zeros: its reducer waits
    for a gradient of every parameter."""
    trainer, _ = make_trainer(tmp_path, random_copy_steps=1, random_copy_length=4)

    class Parts(torch.nn.Module):
        requires = frozenset()

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 3)
    trainer.objective = Parts()
    grads = []
    trainer.optimizer.step = lambda *a, **k: grads.append(trainer.objective.proj.weight.grad)
    trainer.train_step(trainer.window_batches(0, 0))
    assert grads == [None]
    trainer.ddp = object()  # only whether DDP wraps the model matters here
    trainer._untouched_zeros(torch.tensor(1.0, requires_grad=True), None).backward()
    grad = trainer.objective.proj.weight.grad
    assert grad is not None and not grad.any()


def test_the_teacher_runs_before_the_student_so_their_activations_do_not_stack(tmp_path):
    """A distillation micro-batch runs the teacher's forward first: its temporaries are freed before
    the student's forward holds activations for backward, so the two do not add up in the peak."""
    trainer, _ = make_trainer(tmp_path)
    teacher = copy.deepcopy(trainer.model)
    with torch.no_grad():
        teacher.final_logits_bias.normal_()   # a teacher that differs
    student_job = dataclasses.replace(trainer.job, role="student", teacher=teacher,
                                      objective=Objective(0.5, [("vanilla_kl", 0.5, build_loss("vanilla_kl", {}))]))
    trainer = Trainer(student_job, trainer.model, trainer.tokenizer)
    order = []
    for name, model in (("teacher", teacher), ("student", trainer.model)):
        model.get_encoder().register_forward_pre_hook(lambda *_, name=name: order.append(name))
    stats = trainer.train_step(trainer.window_batches(0, 0))
    assert order == ["teacher", "student"] and stats["vanilla_kl"] > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_train_on_cpu(tmp_path, precision):
    trainer, pairs = make_trainer(tmp_path, precision=precision)
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    losses = [trainer.train_step(trainer.window_batches(0, w))["loss"] for w in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    trainer.state.step = 3
    ckpt = load_checkpoint_file(trainer.save_checkpoint())
    if precision == "fp16":
        assert ckpt["scaler"]["scale"] > 0  # GradScaler state travels with the checkpoint


def test_a_non_finite_loss_stops_with_the_step_and_a_fix(tmp_path):
    trainer, _ = make_trainer(tmp_path)
    trainer.loss_sums = lambda batch, **kw: (torch.tensor(float("nan"), requires_grad=True), {})
    with pytest.raises(UserError, match=r"became nan at step 1; lower training\.teacher\.learning_rate"):
        trainer.train_step(trainer.window_batches(0, 0))


def losses_by_step(path):
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r}


@pytest.mark.parametrize("mode", ["train_teacher", "distill_student"])
def test_resume_mid_epoch_continues_exactly(tiny_config_dict, write_config, tmp_path, mode):
    """8 steps straight == 3 steps, checkpoint, resume for the remaining 5 (bit for bit, fp32 CPU), with
    random-copy steps and a copy warm-up that both end after the resume."""
    for role in ("teacher", "student"):
        tiny_config_dict["training"][role].update(max_steps=8, eval_every=3, log_every=1,
                                                  gradient_accumulation_steps=2, save_total_limit=5,
                                                  autoencode_steps=5, random_copy_steps=4,
                                                  random_copy_length=5)
    cfg = str(write_config(tiny_config_dict))
    role = "teacher" if mode == "train_teacher" else "student"
    extra = []
    if mode == "distill_student":
        assert main(["--mode", "train_teacher", "--config", cfg, "--output_dir", str(tmp_path / "t")]) == 0
        extra = ["--teacher_path", str(tmp_path / "t/teacher/final")]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["--mode", mode, "--config", cfg, "--output_dir", str(straight), *extra]) == 0
    ckpt3 = straight / "checkpoints" / role / "step_00000003.pt"
    assert load_checkpoint_file(ckpt3)["state"]["window"] != 0  # step 3 falls mid-epoch
    (resumed / "checkpoints" / role).mkdir(parents=True)
    shutil.copy(ckpt3, resumed / "checkpoints" / role / ckpt3.name)
    assert main(["--mode", mode, "--config", cfg, "--output_dir", str(resumed), *extra,
                 "--resume_from_checkpoint", "auto"]) == 0

    a = load_checkpoint_file(straight / "checkpoints" / role / "step_00000008.pt")
    b = load_checkpoint_file(resumed / "checkpoints" / role / "step_00000008.pt")
    for name, tensor in a["weights"]["model"].items():
        assert torch.equal(tensor, b["weights"]["model"][name]), name
    full, rest = losses_by_step(straight / role / "metrics.jsonl"), losses_by_step(resumed / role / "metrics.jsonl")
    assert sorted(rest) == [4, 5, 6, 7, 8]  # exactly the remaining steps ran
    assert rest == {s: full[s] for s in rest}


def test_resume_refuses_another_roles_checkpoint_and_garbage(tiny_config_dict, write_config, tmp_path):
    cfg = str(write_config(tiny_config_dict))
    assert main(["--mode", "train_teacher", "--config", cfg, "--output_dir", str(tmp_path / "a")]) == 0
    teacher_ckpt = sorted((tmp_path / "a/checkpoints/teacher").glob("step_*.pt"))[-1]
    code = main(["--mode", "distill_student", "--config", cfg, "--output_dir", str(tmp_path / "a"),
                 "--resume_from_checkpoint", str(teacher_ckpt)])
    assert code == 2
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(teacher_ckpt.read_bytes()[:1000])
    code = main(["--mode", "train_teacher", "--config", cfg, "--output_dir", str(tmp_path / "b"),
                 "--resume_from_checkpoint", str(garbage)])
    assert code == 2
