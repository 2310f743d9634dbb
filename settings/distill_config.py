"""The distill section: the student's objective, pseudo-labels, the teacher cache, on-policy batches."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from settings.fields import MAX_TOKENS, _choice, _in_range, _positive, doc


@dataclass
class PseudoLabelConfig:
    """Sequence-level distillation (Kim & Rush, 2016): the teacher's outputs become training targets.

    Generated once for the training sources (and data.unlabeled_file), cached on disk under a
    fingerprint of the teacher, tokenizer, sources and decoding settings; an interrupted run
    resumes from the shards already written."""

    targets: str = doc("'teacher': train on the teacher's outputs instead of the references; 'both': on the "
                       "references and the teacher's outputs (unlabeled sources always get the teacher's).", "teacher")
    num_beams: int = doc("Beam size of the teacher's decoding (1 = greedy).", 4)
    max_new_tokens: Optional[int] = doc("Longest generated target (default: data.max_target_length).", None)
    batch_size: int = doc("Sources per generation batch (batches are sorted by length).", 32)
    shard_size: int = doc("Sources per cache shard; a resumed run skips the shards already written.", 512)
    cache_dir: Optional[str] = doc("Cache directory (default: <output_dir>/pseudo_labels); runs with the same "
                                   "fingerprint share it.", None)

    def __post_init__(self):
        _choice("targets", self.targets, ("teacher", "both"))
        for name in ("num_beams", "batch_size", "shard_size"):
            _positive(name, getattr(self, name))
        if self.max_new_tokens is not None:
            _positive("max_new_tokens", self.max_new_tokens)


@dataclass
class LossSpec:
    """One distillation term: ``weight * loss``. Loss-specific options go in ``params``-style
    extra keys (e.g. ``temperature``); ``distiller_zoo.build_loss`` validates them."""

    name: str = doc("Loss name from distiller_zoo.LOSSES, e.g. 'vanilla_kl', or your own loss class as "
                    "'my_pkg.my_module:MyLoss' (see the README's custom losses).", "vanilla_kl")
    weight: float = doc("Weight of this term in the total loss.", 1.0)
    params: dict = doc("Loss options, e.g. {temperature: 2.0}. Also accepted as keys beside name/weight.",
                       factory=dict)

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"weight: must be >= 0, got {self.weight}")
        for key, value in self.params.items():
            if not isinstance(key, str):
                raise ValueError(f"{key!r}: loss option names must be strings")
            values = value if isinstance(value, list) else [value]
            for v in values:
                if not isinstance(v, (str, bool, int, float, type(None))) or (
                        isinstance(v, float) and not math.isfinite(v)):
                    raise ValueError(f"{key}: must be a finite number, text, or a list of them, got "
                                     f"{type(v).__name__} {str(v)[:40]}")


@dataclass
class TeacherCacheConfig:
    """Run the teacher once over the training pairs and keep its top-K distribution on disk."""

    top_k: int = doc("Teacher log-probabilities kept per target token (the rest is one tail bucket).", 32)
    dir: Optional[str] = doc("Cache root (default: <output_dir>/teacher_cache); share it between runs: entries "
                             "are keyed by a fingerprint of teacher, tokenizer, pairs, lengths, K and temperatures.",
                             None)

    def __post_init__(self):
        _positive("top_k", self.top_k)


@dataclass
class ReplayConfig:
    """DistiLLM's replay buffer: the student's samples kept and drawn again, so fewer steps generate."""

    size: int = doc("Samples kept (the newest; at most the number of training pairs).", 1024)
    refresh: float = doc("Probability that an on-policy micro-batch generates new samples (added to the buffer) "
                         "instead of drawing from the buffer; 1 = always new.", 0.25)

    def __post_init__(self):
        _positive("size", self.size, 10**7)
        _in_range("refresh", self.refresh, 0.0, 1.0)


@dataclass
class OnPolicyConfig:
    """On-policy distillation (GKD, Agarwal et al. 2024): on a share of the micro-batches the student
    samples its own targets, the teacher scores exactly those tokens, and only ``losses`` apply."""

    fraction: float = doc("GKD's lambda: the share of micro-batches whose targets the student samples (0 = "
                          "off-policy only, as without this section; 1 = every micro-batch). With adaptive, the "
                          "largest share.", 0.5)
    temperature: float = doc("Sampling temperature of the student.", 1.0)
    top_p: float = doc("Nucleus sampling: the smallest set of tokens holding this probability (1 = off).", 1.0)
    top_k: int = doc("Sample among the k most likely tokens only (0 = off).", 0)
    max_new_tokens: Optional[int] = doc("Longest sampled target (default: data.max_target_length).", None)
    losses: list[LossSpec] = doc(
        "The divergences applied on the student's samples, each with its weight (no cross-entropy there); any "
        "logit loss by name. GKD's generalized JSD is jsd with beta.",
        factory=lambda: [LossSpec("jsd", 1.0, {"beta": 0.5, "temperature": 1.0})])
    replay: Optional[ReplayConfig] = doc("Reuse samples from a buffer (DistiLLM), e.g. {size: 1024, refresh: "
                                         "0.25}. null: every on-policy micro-batch samples anew.", None)
    adaptive: bool = doc("DistiLLM's adaptive schedule: the share starts at 0 and rises by adaptive_increment "
                         "(up to fraction) at each validation whose loss did not improve.", False)
    adaptive_increment: float = doc("Step of the adaptive share.", 0.1)

    def __post_init__(self):
        _in_range("fraction", self.fraction, 0.0, 1.0)
        if not 0 < self.temperature <= 100:  # (also refuses NaN) beyond ~100 every token is about as likely
            raise ValueError(f"temperature: must be in (0, 100], got {self.temperature}")
        if not 0 < self.top_p <= 1:  # (also refuses NaN)
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        _in_range("top_k", self.top_k, 0, 10**7)
        if self.max_new_tokens is not None:
            _positive("max_new_tokens", self.max_new_tokens, MAX_TOKENS)
        if not any(spec.weight > 0 for spec in self.losses):
            raise ValueError("losses: give at least one divergence with a weight > 0 (e.g. {name: jsd, beta: 0.5})")
        if not 0 < self.adaptive_increment <= 1:
            raise ValueError(f"adaptive_increment: must be in (0, 1], got {self.adaptive_increment}")


@dataclass
class DistillConfig:
    """The student's objective: ``ce_weight * CE + sum_i weight_i * loss_i``.

    ``alpha * CE + (1 - alpha) * KD`` is ce_weight=alpha with KD weight 1-alpha;
    ``CE + lambda * KD`` is ce_weight=1 with KD weight lambda."""

    ce_weight: float = doc("Weight of the student's cross-entropy on the references.", 0.5)
    losses: list[LossSpec] = doc("Distillation terms.", factory=lambda: [LossSpec()])
    pseudo_labels: Optional[PseudoLabelConfig] = doc(
        "Train on the teacher's generated outputs (sequence-level KD), e.g. {num_beams: 4}; combines with the "
        "logit losses, which then compare the distributions on those targets. null: the references only.", None)
    chunk_size: Optional[int] = doc("Target positions per chunk of the fused loss: CE and the logit losses run "
                                    "chunk by chunk from the decoder states, never holding [batch, length, vocab] "
                                    "logits (also the teacher's CE in train_teacher). null: 128, or more below "
                                    "32,128 vocabulary entries (128 x 32,128 logits per chunk). 0 = the unchunked "
                                    "path with full logits.", None)
    compile_chunks: bool = doc("torch.compile each chunk's loss and gradient where the fused path uses "
                               "autograd: a teacher of another tokenizer, uld, a custom or subclassed loss, "
                               "jsd/skew losses at beta/alpha 0 or 1 (CE, a cached teacher and the built-in "
                               "losses of a live teacher take a closed form without it). ~1.5x faster loss "
                               "math there for a one-off compile of ~15 s. Needs a C++ compiler on CPU, "
                               "Triton on GPU.", False)
    teacher_cache: Optional[TeacherCacheConfig] = doc("Distill from a cached top-K teacher instead of running it "
                                                      "every step, e.g. {top_k: 32}; logit losses only.", None)
    on_policy: Optional[OnPolicyConfig] = doc("On-policy distillation: a share of the micro-batches trains on "
                                              "the student's own samples scored by the teacher, e.g. {fraction: "
                                              "0.5}. null: off-policy only.", None)

    def __post_init__(self):
        if self.chunk_size is not None and self.chunk_size < 0:
            raise ValueError(f"chunk_size: must be >= 0 (0 = unchunked), got {self.chunk_size}")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight: must be >= 0, got {self.ce_weight}")
        if self.ce_weight == 0 and not any(s.weight > 0 for s in self.losses):
            raise ValueError("ce_weight: every weight is zero, the student would learn nothing")
        if self.on_policy is not None and self.teacher_cache is not None:
            raise ValueError("on_policy: a teacher cache holds the teacher's outputs for the training pairs only and "
                             "cannot score the student's new samples; remove distill.teacher_cache or on_policy")
