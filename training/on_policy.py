"""On-policy distillation for encoder-decoders (GKD, Agarwal et al. 2024; DistiLLM, Ko et al. 2024).

A share ``fraction`` of the micro-batches (GKD's lambda) gets targets the student writes itself:
it samples an output for each source (eval mode, no gradient, the KV cache, one batched
``generate``), the teacher scores exactly those tokens through the seam like any batch, and only
the on-policy divergence applies (no cross-entropy against the student's own samples). The other
micro-batches keep the configured objective on references or pseudo-labels.

Which micro-batches are on-policy is a pure function of (seed, step, micro-batch), the same on
every rank; the sampling stream of (seed, step, micro-batch, rank), run in a forked RNG so the
training's own stream (dropout) is untouched. A resume therefore samples exactly what the
interrupted run would have; the replay buffer and the adaptive share are in the checkpoint.

With ``replay`` (DistiLLM's adaptive off-policy), generated samples are kept in a buffer and an
on-policy micro-batch draws from it instead of generating, except with probability
``replay.refresh``. With ``adaptive``, the share starts at 0 and rises by ``adaptive_increment``
(up to ``fraction``) each time the validation loss fails to improve.
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager

import torch

from utils import distributed as dist

_SALT = 0x5EED_0F_0B  # keeps the on-policy streams apart from the data order's (seed * 1000 + epoch)
MICRO_COUNTS = ("op_batches", "op_replayed", "op_gen_s")  # a step's record: micro-batches, seconds generating


class Batches:
    """What each micro-batch trains on: ``(batch, objective, record)`` for a list of pairs.

    Off-policy: ``collator(pairs)`` and the configured objective, exactly as without on-policy
    training. On-policy: the student's samples for the pairs' sources and the on-policy objective."""

    def __init__(self, collator, objective, on_policy: "OnPolicy | None" = None):
        self.collator, self.objective, self.on_policy = collator, objective, on_policy

    def __call__(self, pairs, step: int, micro: int, keep: bool = True):
        """``keep`` False: a stand-in micro-batch of weight 0 (a rank's empty share under torchrun),
        whose samples do not enter the replay buffer."""
        if self.on_policy is None or not self.on_policy.chosen(step, micro):
            return self.collator(pairs), self.objective, {}
        return self.on_policy.batch(self.collator, pairs, step, micro, keep)

    def after_validation(self, loss: float) -> None:
        if self.on_policy is not None:
            self.on_policy.after_validation(loss)

    def state_dict(self) -> dict | None:
        return None if self.on_policy is None else self.on_policy.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.on_policy is not None and state is not None:
            self.on_policy.load_state_dict(state)


class OnPolicy:
    """The student's own targets for the chosen micro-batches (see the module docstring)."""

    def __init__(self, cfg, model, objective, seed: int, device, precision, gen_config):
        self.cfg, self.model, self.objective = cfg, model, objective
        self.seed, self.device, self.precision, self.gen_config = seed, device, precision, gen_config
        self.share = 0.0 if cfg.adaptive else cfg.fraction
        self.best_loss: float | None = None
        self.buffer: list[tuple[str, list[int]]] = []   # (source, sampled target ids), oldest first

    def describe(self) -> str:
        c, replay = self.cfg, self.cfg.replay
        share = f"share rising to {c.fraction:g} (adaptive)" if c.adaptive else f"{c.fraction:g} of the micro-batches"
        reuse = f"; replay buffer of {replay.size:,}, refreshed with p = {replay.refresh:g}" if replay else ""
        return (f"{share} train on the student's samples (T = {c.temperature:g}, top-p {c.top_p:g}, top-k "
                f"{c.top_k or 'off'}, at most {self.gen_config.max_new_tokens} tokens){reuse}: "
                f"{self.objective.formula()}")

    # ------------------------------------------------------------------ which micro-batches
    def chosen(self, step: int, micro: int) -> bool:
        return self.share > 0 and self._stream("choose", step, micro, rank=0).random() < self.share

    def _stream(self, what: str, step: int, micro: int, rank: int | None = None) -> random.Random:
        """A random stream that is a pure function of (seed, what, step, micro-batch, rank)."""
        return random.Random(f"{self.seed}/{_SALT}/{what}/{step}/{micro}/{dist.rank() if rank is None else rank}")

    # ------------------------------------------------------------------ the batch
    def batch(self, collator, pairs, step: int, micro: int, keep: bool = True):
        sources = [s for s, _ in pairs]
        replay = self.cfg.replay
        t0 = time.perf_counter()
        reuse = replay is not None and len(self.buffer) >= len(sources) and \
            self._stream("refresh", step, micro).random() >= replay.refresh
        if reuse:
            samples = [self.buffer[i] for i in self._stream("pick", step, micro).sample(range(len(self.buffer)),
                                                                                          len(sources))]
        else:
            with self._sampling_rng(step, micro):
                samples = list(zip(sources, self.sample(collator, sources)))
            if replay is not None and keep:
                self.buffer = (self.buffer + samples)[-replay.size:]
        batch = collator.sampled_batch([s for s, _ in samples], [ids for _, ids in samples])
        record = {"op_batches": 1.0, "op_replayed": float(reuse), "op_gen_s": time.perf_counter() - t0}
        return batch, self.objective, record

    @torch.no_grad()
    def sample(self, collator, sources: list[str]) -> list[list[int]]:
        """One sampled target per source: token ids as the collator would write labels (the forced
        first token included, the decoder start and everything after the end of sequence left out)."""
        model, was_training = self.model, self.model.training
        model.eval()  # no dropout while sampling: the student's distribution, as it will decode
        try:
            enc = {k: v.to(self.device) for k, v in collator.encode_sources(sources).items()}
            with self.precision.autocast():
                out = model.generate(**enc, generation_config=self.gen_config)
        finally:
            model.train(was_training)
        eos = self.gen_config.eos_token_id
        rows = out[:, 1:].tolist()  # position 0 is the decoder start token; padding only follows an end
        return [ids[:ids.index(eos) + 1] if eos in ids else ids for ids in rows]

    @contextmanager
    def _sampling_rng(self, step: int, micro: int):
        """The global RNG (which generate samples from) seeded for this micro-batch and rank, and
        restored afterwards: the training's dropout stream does not see the sampling."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._stream("sample", step, micro).getrandbits(63))
            yield

    # ------------------------------------------------------------------ schedule and state
    def after_validation(self, loss: float) -> None:
        """DistiLLM's adaptive share: one increment each time the validation loss did not improve."""
        if self.cfg.adaptive:
            if self.best_loss is not None and loss >= self.best_loss:
                self.share = min(self.cfg.fraction, self.share + self.cfg.adaptive_increment)
            self.best_loss = loss if self.best_loss is None else min(self.best_loss, loss)

    def state_dict(self) -> dict:
        return {"share": self.share, "best_loss": self.best_loss,
                "buffer": [[s, list(ids)] for s, ids in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.share, self.best_loss = float(state["share"]), state["best_loss"]
        self.buffer = [(s, list(ids)) for s, ids in state["buffer"]]
