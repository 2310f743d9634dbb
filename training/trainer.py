"""Hand-written training loops for the teacher (cross-entropy) and the student (CE + distillation).

One loop serves both: the student's differs only in its loss, which also runs the frozen
teacher. Each optimizer step consumes a *window* of ``gradient_accumulation_steps``
micro-batches; every loss is a sum over target tokens, divided once by the number of target
tokens in the whole window, so unequal micro-batches weigh every token equally.

Data order is a pure function of (seed, epoch), and checkpoints record the position
(epoch, window) and all RNG states, so a resumed run continues exactly where it stopped.

Under torchrun (utils.distributed) the global micro-batch is ``batch_size`` x the number of ranks,
cut from the same (seed, epoch) order, and each rank takes its share of every micro-batch; the
student (with any trainable loss parts) is wrapped in DistributedDataParallel and the loss is
divided by the window's *global* token count, so N ranks x batch b take exactly the steps of one
process with batch N*b. Rank 0 alone writes; every rank reads the same checkpoints.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import get_scheduler

from checkpoints import latest_checkpoint
from settings import BenchmarkConfig, OptimConfig
from data_loader import Example, Seq2SeqCollator, length_grouped_batches, padding_fraction
from distiller_zoo import IGNORE_INDEX, Objective
from distiller_zoo.fused import fused_logit_objective
from distiller_zoo.heads import decoder_states, lm_head
from distiller_zoo.teacher import teacher_source
from training.checkpointing import CheckpointMixin, TrainState, config_section, total_steps
from training.on_policy import MICRO_COUNTS, Batches, OnPolicy
from training.validation import ValidationMixin
from utils import distributed as dist
from utils.errors import TrainingInterrupted, UserError
from utils.files import atomic_write, read_records
from utils.logs import log
from utils.runtime import GracefulStop, Precision, set_seed

MAX_SKIPPED_FP16_STEPS = 10  # consecutive fp16 overflows tolerated before the run stops


@dataclass
class TrainJob:
    """Everything a training stage needs besides the model (pipeline.make_job builds it from the config)."""

    role: str                       # the stage: "teacher", "student" or "student_ce"
    optim: OptimConfig
    train_pairs: list[tuple[str, str]]
    val_examples: list[Example]
    collator: Seq2SeqCollator
    run_dir: Path                   # <output_dir>/<role>
    checkpoint_dir: Path            # <checkpoint_dir>/<role>
    device: torch.device
    precision: Precision
    seed: int
    config: dict                    # resolved config, stored in checkpoints
    generation: BenchmarkConfig     # decoding for generation metrics during validation
    objective: Objective | None = None
    teacher: object | None = None   # a teacher source (distiller_zoo.teacher), or a bare model (run live)
    chunk_size: int | None = None   # target positions per chunk of the fused loss; 0 = full logits, None = by V
    compile_chunks: bool = False    # torch.compile each chunk's loss and gradient
    on_policy: OnPolicy | None = None  # the student's own samples on a share of the micro-batches

    def __post_init__(self):
        if self.optim.random_copy_steps:  # a length that does not fit fails now, not at step 1
            try:
                self.collator.random_copy_batch(1, self.optim.random_copy_length, torch.Generator())
            except UserError as e:
                raise UserError(f"training.{self.section}.{e}") from None

    @property
    def section(self) -> str:
        return config_section(self.role)


class Trainer(ValidationMixin, CheckpointMixin):
    def __init__(self, job: TrainJob, model, tokenizer):
        self.job, self.model, self.tokenizer = job, model.to(job.device), tokenizer
        self.objective = job.objective.to(job.device) if job.objective else None
        self.batches = Batches(job.collator, self.objective, job.on_policy)  # what each micro-batch trains on
        self.teacher = teacher_source(job.teacher, len(tokenizer))
        if self.teacher is not None:
            self.teacher.to(job.device)
        o = job.optim
        self.world = dist.world_size()
        self.global_batch = o.batch_size * self.world  # pairs per micro-step, over all ranks
        self.micro_batches, self.windows_per_epoch, self.total_steps = total_steps(o, len(job.train_pairs), self.world)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=o.learning_rate, betas=tuple(o.adam_betas))
        self.scheduler = get_scheduler(o.scheduler, self.optimizer, num_warmup_steps=int(o.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        self.scaler = job.precision.grad_scaler()
        self.state = TrainState()
        self._bad_steps = 0  # consecutive non-finite losses
        self._order: tuple[int, list] | None = None
        self._warmup_pairs: tuple[int, list] | None = None
        self.metric_for_best = o.metric_for_best
        self.greater_is_better = o.metric_for_best != "loss"
        self.ddp = self._wrap_ddp() if self.world > 1 else None
        if dist.rank() > 0:  # rank 0 keeps the single-process RNG stream; the others get their own dropout
            set_seed(job.seed * 1_000_003 + dist.rank())

    def _wrap_ddp(self):
        """The student and the trainable loss parts in one DistributedDataParallel (their gradients
        are averaged over the ranks in one all-reduce per optimizer step; see train_step)."""
        from torch.nn.parallel import DistributedDataParallel
        device = self.job.device
        # The models hold no running statistics (no batch norm): no buffers to broadcast per forward.
        return DistributedDataParallel(_Trainable(self.trainable_modules()),
                                       device_ids=[device.index] if device.type == "cuda" else None,
                                       forward_sync_buffers=False)

    # ------------------------------------------------------------------ setup
    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        mods = {"model": self.model}
        if self.objective is not None and any(p.requires_grad for p in self.objective.parameters()):
            mods["objective"] = self.objective  # e.g. feature projections, trained with the student
        return mods

    def _param_groups(self):
        # Weight decay on matrices only: decaying biases and norm gains hurts and helps nothing.
        params = [p for m in self.trainable_modules().values() for p in m.parameters() if p.requires_grad]
        unique = list({id(p): p for p in params}.values())
        return [{"params": [p for p in unique if p.ndim >= 2], "weight_decay": self.job.optim.weight_decay},
                {"params": [p for p in unique if p.ndim < 2], "weight_decay": 0.0}]

    # ------------------------------------------------------------------ data order
    def window_batches(self, epoch: int, window: int) -> list[list[tuple[str, str]]]:
        """This rank's micro-batches (lists of pairs) of one accumulation window; order fixed by (seed,
        epoch). Under torchrun each global micro-batch is shared out among the ranks (a rank's share
        may be empty at the end of an epoch)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self._epoch_batches(epoch))
        accum = self.job.optim.gradient_accumulation_steps
        first = window * accum
        last = min(first + accum, self.micro_batches)
        pairs = self.job.train_pairs
        if epoch * self.windows_per_epoch + window < self.job.optim.autoencode_steps:
            pairs = self._copy_warmup_pairs(epoch)
        return [[pairs[i] for i in dist.shard(b)] for b in self._order[1][first:last]]

    def _copy_warmup_pairs(self, epoch: int) -> list[tuple[str, str]]:
        """The training pairs with a (seed, epoch)-chosen share turned into (source, source)."""
        if self._warmup_pairs is not None and self._warmup_pairs[0] == epoch:
            return self._warmup_pairs[1]
        # a stream apart from the data order's (seed * 1000 + epoch), so the copies do not follow the shuffle
        g = torch.Generator().manual_seed(self.job.seed * 1000 + epoch + 500_000_009)
        copy = (torch.rand(len(self.job.train_pairs), generator=g) < self.job.optim.autoencode_fraction).tolist()
        self._warmup_pairs = (epoch, [(s, s) if c else (s, t) for (s, t), c in zip(self.job.train_pairs, copy)])
        return self._warmup_pairs[1]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """A (seed, epoch)-shuffled order cut into global micro-batches, grouped by length when configured."""
        job, bs = self.job, self.global_batch
        g = torch.Generator().manual_seed(job.seed * 1000 + epoch)
        perm = torch.randperm(len(job.train_pairs), generator=g).tolist()
        plain = [perm[i:i + bs] for i in range(0, len(perm), bs)]
        if not job.optim.group_by_length:
            return plain
        lengths = job.collator.lengths(job.train_pairs)  # tokenizes every pair, once per run
        grouped = length_grouped_batches(perm, lengths, bs, g)
        if self._order is None:
            log.info("%s: length-grouped batches: padding %.1f%% of the token slots instead of %.1f%%", job.role,
                     100 * padding_fraction(grouped, lengths), 100 * padding_fraction(plain, lengths))
        return grouped

    # ------------------------------------------------------------------ loop
    def train(self) -> Path:
        """Train to ``total_steps`` (from wherever load_checkpoint left the state); returns the
        exported final model directory."""
        job = self.job
        if self.state.resumes:  # logged here: the run's log file is attached by now
            r = self.state.resumes[-1]
            log.info("%s: resumed from %s at step %d (epoch %d)%s", job.role, r["checkpoint"], r["step"],
                     self.state.epoch, "; changed: " + "; ".join(r["changed"]) if r["changed"] else "")
        main = dist.is_main()  # rank 0 alone writes the metrics (every rank holds the same numbers)
        if main:
            _truncate_jsonl(job.run_dir / "metrics.jsonl", self.state.step)  # drop steps a resume will redo
        ranks = f" x {self.world} ranks" if self.world > 1 else ""
        log.info("%s: %d training pairs, %d validation examples, %d optimizer steps (%d per epoch), "
                 "batch %d%s x accumulation %d, precision %s, device %s", job.role, len(job.train_pairs),
                 len(job.val_examples), self.total_steps, self.windows_per_epoch, job.optim.batch_size, ranks,
                 job.optim.gradient_accumulation_steps, job.precision.name, job.device)
        if self.objective is not None:
            log.info("student objective: %s", self.objective.formula())
        if job.on_policy is not None:
            log.info("on-policy: %s", job.on_policy.describe())
        if self.state.step < job.optim.random_copy_steps:
            log.info("%s: steps %d-%d copy %d random tokens (cross-entropy alone), then the training pairs", job.role,
                     self.state.step + 1, job.optim.random_copy_steps, job.optim.random_copy_length)
        self.model.train()
        metrics_file = open(job.run_dir / "metrics.jsonl", "a", encoding="utf-8") if main else None
        progress = _progress(self.total_steps, self.state.step, job.role) if main else _NullProgress()
        try:
            with GracefulStop() as stop:
                self._loop(metrics_file, progress, stop)
        finally:
            progress.close()
            if metrics_file:
                metrics_file.close()
        return self.finish()

    def _loop(self, metrics_file, progress, stop: GracefulStop) -> None:
        job = self.job
        tokens_seen, t0 = 0, time.perf_counter()
        while self.state.step < self.total_steps:
            record = self.train_step(self.window_batches(self.state.epoch, self.state.window))
            tokens_seen += record.pop("_tokens")
            epoch_done = self._advance()
            progress.update(1)
            if self.state.step % job.optim.log_every == 0 or self.state.step == self.total_steps:
                elapsed = time.perf_counter() - t0
                record.update(tokens_per_s=round(tokens_seen / max(elapsed, 1e-9), 1))
                tokens_seen, t0 = 0, time.perf_counter()
                _write_jsonl(metrics_file, record)
                log.info("%s step %d/%d loss %.4f lr %.2e %s", job.role, record["step"], self.total_steps,
                         record["loss"], record["lr"], _fmt_terms(record))
            saved = None
            if self._checkpoint_due(epoch_done):
                if job.val_examples:
                    result = self.validate()
                    self.batches.after_validation(result["loss"])  # the adaptive on-policy share
                    _write_jsonl(metrics_file, {"step": self.state.step, "eval": result})
                saved = self.save_checkpoint()
            # A signal may reach one rank only: all stop after the same step, with one checkpoint.
            if dist.any_rank(stop.signum is not None):
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, self.state.step,
                                          saved or self.save_checkpoint())

    def train_step(self, window: list[list[tuple[str, str]]]) -> dict:
        """One optimizer step over an accumulation window; returns the step's log record."""
        job = self.job
        # A rank whose share of a micro-batch is empty runs one pair with weight 0: DDP needs every
        # rank in every gradient all-reduce.
        weights = [1.0 if pairs else 0.0 for pairs in window]
        copying = self.state.step < job.optim.random_copy_steps
        micro = [(self._random_copies(i, len(pairs) or 1), None, {}) if copying else
                 self.batches(pairs or job.train_pairs[:1], self.state.step, i, keep=bool(pairs))
                 for i, pairs in enumerate(window)]
        batches = [self._to_device(batch) for batch, _, _ in micro]
        n_tokens = int(dist.sum_all([sum(w * int((b["labels"] != IGNORE_INDEX).sum())
                                         for w, b in zip(weights, batches))])[0])
        # DDP averages gradients over the ranks; times world it is their sum, the whole window's.
        scale = self.world / n_tokens
        sums: dict[str, float] = {}
        for k, v in (kv for _, _, record in micro for kv in record.items()):  # e.g. on-policy generation time
            sums[k] = sums.get(k, 0.0) + v
        for i, (batch, w, (_, objective, _)) in enumerate(zip(batches, weights, micro)):
            # Gradients are all-reduced once per window: not on the accumulating micro-steps.
            sync = self.ddp.no_sync() if self.ddp is not None and i < len(batches) - 1 else nullcontext()
            with sync:
                with job.precision.autocast(), _no_exit(job.role, self.state.step + 1):
                    total, terms = self.loss_sums(batch, objective=objective)
                # Divide once by the window's token count: the gradient equals that of one big batch.
                self.scaler.scale(total * (w * scale)).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + w * float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + w * float(total.detach())
        if self.objective is not None and all(objective is not self.objective for _, objective, _ in micro):
            for p in self.objective.parameters():  # untrained this step (see _untouched_zeros): AdamW skips
                p.grad = None                       # them, rather than moving them on momentum and decay
        sums = dict(zip(sums, dist.sum_all(list(sums.values()))))  # every rank logs the global numbers
        loss = sums["loss"] / n_tokens
        self._check_finite(loss)
        self.scaler.unscale_(self.optimizer)
        if job.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           job.optim.max_grad_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler.get_scale() >= scale:  # a step the GradScaler skipped does not advance the schedule
            self.scheduler.step()
        record = {"step": self.state.step + 1, "epoch": self.state.epoch, "loss": round(loss, 6), "lr": lr,
                  "_tokens": n_tokens}
        record.update({k: round(v / n_tokens, 6) for k, v in sums.items() if k not in ("loss", *MICRO_COUNTS)})
        # per step and rank (the mean over the ranks), not per token: micro-batches, seconds generating
        record.update({k: round(sums[k] / self.world, 4) for k in MICRO_COUNTS if k in sums})
        return record

    def _check_finite(self, loss: float) -> None:
        """Under fp16 a batch whose activations overflow gives a non-finite loss now and then: that step
        is skipped (the GradScaler sees non-finite gradients and lowers its scale; overflowing
        gradients alone it already skips by itself). Anything else, or fp16 overflowing step after
        step, stops the run."""
        role, step = self.job.role, self.state.step + 1
        if math.isfinite(loss):
            self._bad_steps = 0
            return
        self._bad_steps += 1
        if self.scaler.is_enabled() and self._bad_steps <= MAX_SKIPPED_FP16_STEPS:
            log.warning("%s step %d: fp16 overflow (loss %s); the GradScaler skips this step", role, step, loss)
            return
        self.optimizer.zero_grad(set_to_none=True)
        fp16 = ", or use precision bf16 (or fp32) instead of fp16" if self.scaler.is_enabled() else ""
        self._stop_not_finite(f"the loss became {loss} at step {step}", fp16)

    def _stop_not_finite(self, what: str, hint: str = ""):
        """Stop a run whose loss or weights are no longer finite. Nothing of it is saved; the message
        points at the last checkpoint saved, which passed these checks."""
        role, key = self.job.role, f"training.{self.job.section}.learning_rate"
        good = latest_checkpoint(self.job.checkpoint_dir)
        if good is not None:
            then = f"then resume from the last good checkpoint: --resume_from_checkpoint {good} --set {key}=<lower>"
        else:
            then = "then start the stage over (no good checkpoint was saved yet)"
        raise UserError(f"{role}: {what}; lower {key}{hint}, {then}")

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for m in self.trainable_modules().values() for p in m.parameters())

    def _random_copies(self, micro: int, n: int) -> dict:
        """A random_copy_steps micro-batch: a pure function of (seed, step, micro-batch, rank), so a
        resume redoes it exactly."""
        g = torch.Generator().manual_seed(((self.job.seed * 1_000_003 + self.state.step) * 1009 + micro) * 101
                                          + dist.rank() + 700_000_001)
        return self.job.collator.random_copy_batch(n, self.job.optim.random_copy_length, g)

    def loss_sums(self, batch: dict, objective=None):
        """(weighted total, {term: sum}) for one micro-batch, summed over target tokens, of ``objective``
        (the micro-batch's: see training.on_policy.Batches); None is cross-entropy alone (the teacher's
        stage, and random-copy steps: the teacher's outputs on random tokens teach nothing).

        The student's logits are never materialised whole: CE and the logit losses run chunk by
        chunk from its final decoder states (distiller_zoo.fused); the teacher answers through
        the seam (live, cached, ...), whichever kind it is."""
        need = objective.requires if objective is not None else frozenset()
        ce_step = objective is None
        # The teacher first: its forward's temporaries are freed before the student's activations are
        # held, so the two do not stack (a lower peak), and the student's forward reuses their memory.
        teacher = None if ce_step else self.teacher.targets(batch, need)
        out, hidden = self.ddp(batch, need) if self.ddp is not None else decoder_states(self.model, batch, need)
        head = lm_head(self.model, len(self.tokenizer))
        labels = batch["labels"]
        if ce_step:
            mask = labels != IGNORE_INDEX
            ce, _ = fused_logit_objective(hidden[mask], head, labels[mask], None, 1.0, [], [], self.job.chunk_size,
                                          self.job.compile_chunks)
            return self._untouched_zeros(ce, objective), {"ce": ce}
        total, terms = objective.fused(out, hidden, head, teacher, labels, batch["attention_mask"],
                                       self.job.chunk_size, self.job.compile_chunks)
        return self._untouched_zeros(total, objective), terms

    def _untouched_zeros(self, total, objective):
        """DDP waits for a gradient of every trainable parameter: the main objective's own (feature
        projections) get zeros on micro-batches another objective (or CE alone) trains."""
        if objective is self.objective or self.objective is None or self.ddp is None:
            return total
        return total + sum(0.0 * p.sum() for p in self.objective.parameters() if p.requires_grad)

    def _to_device(self, batch):
        return {k: v.to(self.job.device, non_blocking=True) for k, v in batch.items()}

    def _advance(self) -> bool:
        """Move to the next window; True when an epoch just ended."""
        s = self.state
        s.step += 1
        s.window += 1
        if s.window >= self.windows_per_epoch:
            s.epoch, s.window = s.epoch + 1, 0
            return True
        return False

    def _checkpoint_due(self, epoch_done: bool) -> bool:
        """Validate (when there is a validation split) and checkpoint: periodically and at the end."""
        every = self.job.optim.eval_every
        periodic = (self.state.step % every == 0) if every else epoch_done
        return periodic or self.state.step == self.total_steps

# ---------------------------------------------------------------------- helpers
@contextmanager
def _no_exit(role: str, step: int):
    """A loss's code (maybe a user's) that calls sys.exit mid-training must not end the run looking
    like a success (exit 0, no model): it is this run's error."""
    try:
        yield
    except SystemExit as e:
        raise UserError(f"{role} step {step}: a loss called sys.exit({'' if e.code is None else repr(e.code)}) "
                        f"during training; a loss must not exit the program (fix the loss module)") from None


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records up to ``last_step`` (a resumed run logs the later steps again)."""
    if path.is_file():
        records, damaged = read_records(path)
        if damaged:
            log.warning("%s: %d damaged line(s) dropped", path, damaged)
        kept = [r for r in records if isinstance(r.get("step", 0), int) and r.get("step", 0) <= last_step]
        atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept)))


def _write_jsonl(f, record: dict) -> None:
    if f is None:  # not rank 0
        return
    f.write(json.dumps(record) + "\n")
    f.flush()


def _fmt_terms(record: dict) -> str:
    skip = {"step", "epoch", "loss", "lr", "tokens_per_s"}
    terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in skip)
    return f"{terms} ({record.get('tokens_per_s', 0):.0f} tok/s)"


class _Trainable(torch.nn.Module):
    """What DistributedDataParallel wraps: the student and the trainable loss parts (feature
    projections), so both are synchronised. Its forward is the student's decoder pass; the loss is
    computed outside from those states (a projection's gradient still reaches DDP's hooks)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        super().__init__()
        self.parts = torch.nn.ModuleDict(modules)

    def forward(self, batch: dict, need: frozenset):
        return decoder_states(self.parts["model"], batch, need)


class _NullProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, done: int, role: str):
    """tqdm on a terminal; under nohup the periodic log lines are the progress."""
    if not sys.stderr.isatty():
        return _NullProgress()
    from tqdm import tqdm
    return tqdm(total=total, initial=done, desc=role, leave=False)
