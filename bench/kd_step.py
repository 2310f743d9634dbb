"""The cost of one distillation step, side by side: each implementation in its own process.

    bash bench/setup_env.sh                          # once: bench/.venv with TRL and Liger-Kernel
    bench/.venv/bin/python bench/kd_step.py          # every shape; ~30 min on 2 busy cores
    bench/.venv/bin/python bench/kd_step.py --shapes tiny-b8 --repeats 3

Every implementation trains the same student (same seed, same batch) on the same objective,
``0.5 * CE + 0.5 * KL(teacher || student)`` (temperature 1, mean over target tokens), and one
step is: both forwards, the loss, backward, AdamW step. Before anything is timed, one small batch
per model pair goes through every implementation and the student's gradients must agree with the
naive reference (fp32, relative 1e-4; a cached teacher is checked with top_k = V, where it is exact,
and timed with the configured K); a disagreement stops the run. Then each implementation runs
in a fresh process: ``--warmup`` steps, then ``--repeats`` timed steps (median and min-max), and
the extra resident memory of a step (peak RSS during the timed steps minus the RSS before them;
``malloc_trim`` first returns the warm-up's freed heap to the system, so the baseline is honest).
The allocator keeps its default settings: forcing every large block through ``mmap`` (as an
earlier version did) faults fresh pages on every allocation, a cost a training run does not pay and
that falls hardest on paths allocating many chunk-sized buffers.

Implementations: ``ce`` (student step, CE only), ``teacher_forward`` (no-grad teacher logits),
``naive`` (``F.kl_div`` on full logits), ``trl`` (TRL's ``generalized_jsd_loss``, beta 0),
``liger`` / ``liger_compiled`` (``LigerFusedLinearJSDLoss``, beta 0, fed the decoders' final hidden
states and the LM heads' weights; eager and ``torch.compile``) and ``project*``: this project
through ``Trainer.train_step`` (the trainer's own path, objective from the config).
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {"student": dict(layers=(3, 3), d_model=128, heads=4, d_ff=512),
        "teacher": dict(layers=(4, 4), d_model=256, heads=4, d_ff=1024)}
T5_SIZES = {"student": dict(layers=(6, 6), d_model=512, heads=8, d_ff=2048),     # t5-small's shape
            "teacher": dict(layers=(12, 12), d_model=768, heads=12, d_ff=3072)}  # t5-base's shape
# name -> (models, vocabulary rows, (batch, source length, target length))
SHAPES = {
    "tiny-b8": (TINY, 32128, (8, 128, 64)),
    "tiny-b64": (TINY, 32128, (64, 64, 64)),
    "tiny-v2k-b8": (TINY, 2000, (8, 128, 64)),
    "tiny-v2k-b64": (TINY, 2000, (64, 64, 64)),
    "t5-small-base": (T5_SIZES, 32128, (4, 96, 96)),
}
CHECK_BATCH = (4, 32, 16)
LABEL_PADDING = 0.2  # share of the label positions that are padding (-100)
IMPLS = ("ce", "teacher_forward", "naive", "trl", "liger", "liger_compiled", "project")
# the project's variants timed by default besides "project" (the trainer's default: vanilla_kl, fused):
# the unchunked path, the cached teacher and the trainer's CE-only step with CE fused (the reference for
# "the cached step below the CE step once CE is fused too"). All fused ones take the closed form
# (distiller_zoo/closed_form.py), which compile_chunks does not change. --losses adds each other logit loss.
DEFAULT_PROJECT = ('{"chunk_size": 0}', '{"teacher_cache": {"top_k": 32}}', '{"ce_only": true}')
CACHED = 'project[{"teacher_cache": {"top_k": 32}}]'
FUSED_CE = 'project[{"ce_only": true}]'   # the trainer's CE-only step, CE fused
OTHER_LOSSES = ("reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl")
# the losses Liger-Kernel also has, as LigerFusedLinearJSDLoss's beta (same conventions as ours): with
# --losses, Liger is timed at that beta too, so each is compared with its own kind
LIGER_BETA = {"reverse_kl": 1.0, "jsd": 0.5}
CHECKED = ("naive", "trl", "liger", "liger_compiled", "project")  # each checked against its reference
GRAD_PARAMS = ("shared.weight", "decoder.final_layer_norm.weight", "encoder.block.0.layer.0.SelfAttention.q.weight",
               "decoder.block.0.layer.1.EncDecAttention.v.weight")


# ----------------------------------------------------------------------------- models and data
def build_model(spec: dict, vocab: int, seed: int):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=spec["d_model"], d_kv=spec["d_model"] // spec["heads"], d_ff=spec["d_ff"],
                   num_layers=spec["layers"][0], num_decoder_layers=spec["layers"][1], num_heads=spec["heads"],
                   dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5ForConditionalGeneration._from_config(cfg)


def make_batch(vocab: int, shape: tuple[int, int, int], seed: int = 1) -> dict:
    """Random ids; target lengths drawn so that LABEL_PADDING of the label positions are padding."""
    import torch
    b, s, t = shape
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (b, s), generator=g)
    labels = torch.randint(3, vocab, (b, t), generator=g)
    lengths = torch.full((b,), round(t * (1 - LABEL_PADDING)))
    lengths += torch.randint(-t // 5, t // 5 + 1, (b,), generator=g)
    lengths[-1] = round(t * (1 - LABEL_PADDING)) * b - int(lengths[:-1].sum())  # exact share overall
    lengths = lengths.clamp(1, t)
    positions = torch.arange(t)[None, :]
    labels = labels.masked_fill(positions >= lengths[:, None], -100)
    labels[torch.arange(b), lengths - 1] = 1  # every target ends with </s>
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def decoder_hidden(model, batch):
    """The decoder's final hidden states as the LM head sees them (T5's tied-embedding rescaling)."""
    enc = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    dec_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    h = model.decoder(input_ids=dec_ids, encoder_hidden_states=enc,
                      encoder_attention_mask=batch["attention_mask"]).last_hidden_state
    return h * model.model_dim ** -0.5 if model.config.scale_decoder_outputs else h


def logits(model, batch):
    dec_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec_ids,
                 use_cache=False).logits


# ----------------------------------------------------------------------------- implementations
def make_step(impl: str, student, teacher, vocab: int, project_options: dict, batch: dict):
    """A function batch -> loss (float) doing one whole training step, and its optimizer."""
    import torch
    import torch.nn.functional as F

    if impl.startswith("project"):
        return project_step(student, teacher, vocab, project_options, batch)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def kd_sum(s_logits, t_logits, labels):  # forward KL summed over vocabulary and target tokens
        mask = labels != -100
        kl = F.kl_div(F.log_softmax(s_logits.float(), -1), F.log_softmax(t_logits.float(), -1), reduction="none",
                      log_target=True).sum(-1)
        return kl[mask].sum()

    def loss_fn(batch):
        labels = batch["labels"]
        n = (labels != -100).sum()
        if impl == "liger" or impl == "liger_compiled":
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
            fused = LigerFusedLinearJSDLoss(weight_hard_loss=0.5, weight_soft_loss=0.5,
                                            beta=project_options.get("beta", 0.0),
                                            compiled=impl == "liger_compiled")
            with torch.no_grad():
                t_h = decoder_hidden(teacher, batch)
            s_h = decoder_hidden(student, batch)
            return fused(s_h.reshape(-1, s_h.shape[-1]), student.lm_head.weight, t_h.reshape(-1, t_h.shape[-1]),
                         teacher.lm_head.weight, labels.reshape(-1))
        s_logits = logits(student, batch)
        ce = F.cross_entropy(s_logits.float().reshape(-1, s_logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        if impl == "ce":
            return ce
        with torch.no_grad():
            t_logits = logits(teacher, batch)
        if impl == "naive":
            return 0.5 * ce + 0.5 * kd_sum(s_logits, t_logits, labels) / n
        if impl == "trl":
            from trl.experimental.gkd.gkd_trainer import GKDTrainer
            return 0.5 * ce + 0.5 * GKDTrainer.generalized_jsd_loss(s_logits, t_logits, labels, beta=0.0,
                                                                      num_items_in_batch=n)
        raise ValueError(impl)

    if impl == "teacher_forward":
        def step(batch):
            with torch.no_grad():
                return float(logits(teacher, batch).float().mean())
        return step, None

    def step(batch):
        loss = loss_fn(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)
    return step, opt


def project_step(student, teacher, vocab: int, options: dict, batch: dict):
    """This project's step: ``Trainer.train_step`` on a job built as main.py builds it (the collator is
    replaced by the prepared batch; with ``teacher_cache`` the cache is built over it first, untimed)."""
    import torch
    from settings import BenchmarkConfig, DistillConfig, LossSpec, OptimConfig
    from pipeline import build_objective
    from training import Trainer, TrainJob
    from utils.runtime import resolve_precision
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    loss = options.pop("loss", "vanilla_kl")
    ce_only = options.pop("ce_only", False)   # the trainer's own CE-only step: fused CE, no teacher
    unknown = sorted(set(options) - fields)
    if unknown:
        raise SystemExit(f"this checkout's distill config has no {', '.join(unknown)}")
    cache = options.pop("teacher_cache", None)
    distill = DistillConfig(ce_weight=0.5, losses=[LossSpec(loss, 0.5,
                                                            {"temperature": 1.0})], **options)
    objective = None if ce_only else build_objective(SimpleNamespace(distill=distill))
    if objective is not None:
        objective.vocab_size = vocab
        objective.bind(student.config, teacher.config)
    tok = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1, "__len__": lambda self: vocab,
                           "get_vocab": lambda self: {}})()
    tmp = Path(tempfile.mkdtemp(prefix="kd_bench_"))
    job_fields = {f.name for f in dataclasses.fields(TrainJob)}   # older checkouts lack the fused path
    extra = {k: getattr(distill, k) for k in ("chunk_size", "compile_chunks") if k in job_fields}
    job = TrainJob(role="student", optim=OptimConfig(max_steps=10_000, batch_size=1, max_grad_norm=None,
                                                     warmup_ratio=0.0, learning_rate=1e-4),
                   train_pairs=[("", "")], val_examples=[], collator=FixedBatch(batch), run_dir=tmp,
                   checkpoint_dir=tmp, device=torch.device("cpu"),
                   precision=resolve_precision("fp32", torch.device("cpu")), seed=0, config={}, generation=BenchmarkConfig(), objective=objective,
                   teacher=None if ce_only else teacher, **extra)
    if cache is not None:
        from distiller_zoo.cache import open_cache
        job.teacher = open_cache(tmp / "cache", teacher, tok, job.train_pairs, job.collator, cache["top_k"],
                                 objective.temperatures(), vocab)
    trainer = Trainer(job, student, tok)
    student.train()

    def step(batch):
        job.collator.batch = batch
        return trainer.train_step([[("", "")]])["loss"]
    return step, trainer.optimizer


class FixedBatch:
    """Stands in for the collator: the prepared batch (tokenization is not what is measured)."""

    prefix, max_source_length, max_target_length = "", 0, 0

    def __init__(self, batch: dict):
        self.batch = batch

    def __call__(self, pairs) -> dict:
        return self.batch


# ----------------------------------------------------------------------------- worker process
def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    models, vocab, shape = SHAPES[a.shape]
    student, teacher = build_model(models["student"], vocab, 0), build_model(models["teacher"], vocab, 1)
    teacher.eval().requires_grad_(False)
    batch = make_batch(vocab, CHECK_BATCH if a.check else shape)
    options = json.loads(a.project_options)
    if a.check and "teacher_cache" in options:  # top-K is an approximation; with K = V the cache is exact
        options["teacher_cache"]["top_k"] = vocab
    step, opt = make_step(a.impl, student, teacher, vocab, options, batch)
    if a.check:
        grads = {}
        opt.step = lambda *args, **kw: grads.update(
            {n: p.grad.detach().clone() for n, p in student.named_parameters() if n in GRAD_PARAMS})
        loss = step(batch)
        torch.save({"loss": loss, "grads": grads}, a.out)
        return {"impl": a.impl, "loss": loss}
    for _ in range(a.warmup):
        step(batch)
    ctypes.CDLL("libc.so.6").malloc_trim(0)          # the warm-up's freed heap back to the system
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    base = rss_mb("VmRSS")
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    return {"impl": a.impl, "times": times, "extra_mb": rss_mb("VmHWM") - base, "load": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- driver
def run_worker(impl: str, shape: str, a, check: bool, out: Path | None = None, options: dict | None = None) -> dict:
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1",
               OMP_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--worker", impl, "--shapes", shape, "--threads", str(a.threads),
           "--repeats", str(a.repeats), "--warmup", str(a.warmup), "--project-options", json.dumps(options or {})]
    if check:
        cmd += ["--check", "--out", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return {"impl": impl, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def reference_of(options: dict) -> tuple[str, dict]:
    """What a variant must agree with: the naive forward KL, the plain CE step for the CE-only variant, or
    for another loss its unchunked path."""
    loss = options.get("loss", "vanilla_kl")
    if "beta" in options:   # Liger at another beta
        loss = {b: name for name, b in LIGER_BETA.items()}[options["beta"]]
    if options.get("ce_only"):
        return "ce", {}
    if loss == "vanilla_kl":
        return "naive", {}
    ref = {"loss": loss, "chunk_size": 0}
    return f"project[{json.dumps(ref)}]", ref


def check_gradients(shape: str, impls: list[tuple[str, dict]], a) -> None:
    """Every implementation's loss and student gradients on one small batch equal its reference."""
    import torch
    refs = {name: reference_of(options) for name, options in impls}
    todo = dict(impls) | dict(refs.values())
    with tempfile.TemporaryDirectory() as d:
        results = {}
        for i, (name, options) in enumerate(todo.items()):
            out = Path(d) / f"{i}.pt"
            r = run_worker(name.split("[")[0], shape, a, True, out, options)
            if "error" in r:
                print(f"  check {name}: skipped ({r['error']})")
                continue
            results[name] = torch.load(out)
        for name, r in results.items():
            ref_name = refs.get(name, (name,))[0]
            ref = results[ref_name]
            worst = max(float((r["grads"][k] - g).abs().max() / g.abs().max()) for k, g in ref["grads"].items())
            ok = abs(r["loss"] - ref["loss"]) <= 1e-4 * abs(ref["loss"]) and worst <= 1e-4
            print(f"  check {name:50s} loss {r['loss']:.6f} ({ref_name.split('[')[0]} {ref['loss']:.6f}), worst "
                  f"relative gradient difference {worst:.1e}: {'ok' if ok else 'MISMATCH'}")
            if not ok:
                raise SystemExit(f"{name} does not compute its reference's gradients; fix before timing")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--project", action="append", default=[],
                   help='project variant as JSON distill options, e.g. \'{"chunk_size": 0}\' (repeatable; default: '
                        + " ".join(DEFAULT_PROJECT) + ")")
    p.add_argument("--losses", default="", help=f"also time the default (fused) path with these losses "
                                                f"(comma-separated, or 'all' = {','.join(OTHER_LOSSES)})")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="processes per implementation, run round-robin")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--project-options", default="{}", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.impl, a.shape = a.worker, a.shapes
        print(json.dumps(worker(a)))
        return 0
    import torch
    impls = [(i, {}) for i in a.impls.split(",")]
    impls += [(f"project[{o}]", json.loads(o)) for o in a.project or DEFAULT_PROJECT]
    losses = OTHER_LOSSES if a.losses == "all" else [x for x in a.losses.split(",") if x]
    impls += [(f"project[{json.dumps(o)}]", o) for o in ({"loss": x} for x in losses)]
    if "liger_compiled" in a.impls.split(","):
        impls += [(f"liger_compiled[{json.dumps({'beta': LIGER_BETA[x]})}]", {"beta": LIGER_BETA[x]})
                  for x in losses if x in LIGER_BETA]
    print(f"machine: {platform.machine()} {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}, "
          f"torch {torch.__version__}, {a.threads} threads; load average at start {os.getloadavg()[0]:.2f}")
    checked = set()
    for shape in a.shapes.split(","):
        models, vocab, dims = SHAPES[shape]
        key = (id(models), vocab)
        if key not in checked:
            print(f"gradient check, {shape} models, V={vocab}, batch {CHECK_BATCH}:")
            check_gradients(shape, [(n, o) for n, o in impls if n.split("[")[0] in CHECKED], a)
            checked.add(key)
        rows: dict[str, dict] = {}
        # round-robin: a slow spell of the machine hits every implementation alike; each round starts one
        # implementation later, so with as many rounds as implementations each runs once in every position
        for k in range(a.rounds):
            for name, options in impls[k % len(impls):] + impls[:k % len(impls)]:
                r = run_worker(name.split("[")[0], shape, a, False, options=options)
                old = rows.setdefault(name, r)
                if old is not r and "error" not in r and "error" not in old:
                    old.update(times=old["times"] + r["times"], extra_mb=max(old["extra_mb"], r["extra_mb"]),
                               load=max(old["load"], r["load"]))
        print_table(shape, vocab, dims, rows)
    return 0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def print_table(shape, vocab, dims, rows) -> None:
    print(f"\n{shape}: V={vocab}, (B, S, T)={dims}, fp32; median [min-max] of the timed steps")
    base = {k: statistics.median(rows[k]["times"]) for k in ("ce", "teacher_forward") if "times" in rows.get(k, {})}
    floor = sum(base.values()) if len(base) == 2 else None
    print(f"  {'implementation':44s} {'step s':>8s} {'spread':>15s} {'x CE':>6s} {'x floor':>8s} {'extra MB':>9s} "
          f"max load")
    for name, r in rows.items():
        if "error" in r:
            print(f"  {name:44s} failed: {r['error']}")
            continue
        med = statistics.median(r["times"])
        ratio = f"{med / base['ce']:6.2f}" if "ce" in base else "     -"
        fl = f"{med / floor:8.2f}" if floor else "       -"
        print(f"  {name:44s} {med:8.3f} [{min(r['times']):6.3f}-{max(r['times']):6.3f}] {ratio} {fl} "
              f"{r['extra_mb']:9.0f} {r['load']:.1f}")
    if floor:
        print(f"  floor (CE step + teacher forward): {floor:.3f} s")
    print_targets(rows, vocab, dims)
    sys.stdout.flush()


def print_targets(rows: dict, vocab: int, dims: tuple) -> None:
    """The issue's targets as ratios of this table's medians (and extra memory); the one against naive
    and TRL is set at B x T = 4,096, V = 32,128 only."""
    med = {k: statistics.median(r["times"]) for k, r in rows.items() if "times" in r}
    mem = {k: r["extra_mb"] for k, r in rows.items() if "times" in r}
    fused = "project"   # the trainer's default path: forward KL's closed form

    def line(what, num, den, limit, memory=False):
        if num in med and den in med:
            x = (mem if memory else med)[num] / max((mem if memory else med)[den], 1e-9)
            ok = x <= limit
            print(f"  target {what:58s} {x:5.2f}x (<= {limit:.2f}x): {'met' if ok else 'NOT met'}")
    print("  targets (ratios of medians; memory: extra MB):")
    line("fused KD step / Liger compiled, time", fused, "liger_compiled", 1.0)
    line("fused KD step / Liger compiled, memory", fused, "liger_compiled", 1.0, memory=True)
    for name in med:
        if name.startswith('project[{"loss"'):
            loss = json.loads(name[len("project["):-1])["loss"]
            liger = f"liger_compiled[{json.dumps({'beta': LIGER_BETA[loss]})}]" if loss in LIGER_BETA else None
            if liger in med:   # Liger's own kind of this loss
                line(f"fused {loss} step / Liger compiled {loss}, time", name, liger, 1.0)
                line(f"fused {loss} step / Liger compiled {loss}, memory", name, liger, 1.0, memory=True)
            line(f"fused {loss} step / Liger compiled (forward KL), time", name, "liger_compiled", 1.0)
            line(f"fused {loss} step / Liger compiled (forward KL), memory", name, "liger_compiled", 1.0, memory=True)
    if dims[0] * dims[2] == 4096 and vocab == 32128:
        line("fused KD step / naive, time (>= 2.5x faster)", fused, "naive", 0.4)
        line("fused KD step / TRL, time (>= 2.5x faster)", fused, "trl", 0.4)
    line("cached-teacher step / CE-only step, time", CACHED, "ce", 1.10)
    line("cached-teacher step / CE-only step, time (below it: CE fused)", CACHED, "ce", 1.0)
    line("our fused CE-only step / CE-only step, time", FUSED_CE, "ce", 1.0)
    if CACHED in med and FUSED_CE in med:
        print(f"  (the cached teacher's KD terms cost {med[CACHED] / med[FUSED_CE]:.2f}x our fused CE-only step)")


if __name__ == "__main__":
    sys.exit(main())
