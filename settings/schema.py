"""The config schema: one dataclass per section, each field documented and validated.

A config file has the sections ``teacher``, ``student``, ``data``, ``training``, ``distill`` and
``benchmark``. Each field carries its documentation in ``metadata["doc"]`` (rendered into the
README by ``python -m settings.reference``); ``__post_init__`` validates values and raises
``ValueError("key: problem")``, which :mod:`settings.loading` turns into a one-line user error
naming the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.json"


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A dataclass field whose documentation travels with it."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


# --------------------------------------------------------------------------- models
@dataclass
class ArchConfig:
    """Architecture of a model built from scratch (``init: scratch``)."""

    type: str = doc("Model family: 't5' (relative positions) or 'bart' (learned absolute positions).", "bart")
    d_model: int = doc("Hidden width.", 256)
    encoder_layers: int = doc("Number of encoder layers.", 2)
    decoder_layers: int = doc("Number of decoder layers.", 2)
    heads: int = doc("Attention heads per layer (d_model must be divisible by it).", 4)
    d_ff: int = doc("Feed-forward inner width.", 1024)
    dropout: float = doc("Dropout probability.", 0.1)
    max_positions: int = doc("Longest sequence (BART's learned position table; unused by T5).", 512)

    def __post_init__(self):
        _choice("type", self.type, ("t5", "bart"))
        for name, hi in (("d_model", 2**16), ("encoder_layers", 1000), ("decoder_layers", 1000), ("heads", 1024),
                         ("d_ff", 2**18), ("max_positions", MAX_TOKENS)):
            _positive(name, getattr(self, name), hi)
        _in_range("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        layer = 4 * self.d_model ** 2 + 2 * self.d_model * self.d_ff  # attention + feed-forward weights
        params = (self.encoder_layers + 1.5 * self.decoder_layers) * layer  # cross-attention: half a layer more
        if params > MAX_PARAMETERS:
            raise ValueError(f"d_model: with d_ff {self.d_ff:,} and {self.encoder_layers} + {self.decoder_layers} "
                             f"layers the model has about {params:.2g} parameters, beyond what any run can "
                             f"allocate (<= {MAX_PARAMETERS:.0e}); lower d_model, d_ff or the layer counts")
        if self.d_model % self.heads:
            raise ValueError(f"heads: d_model {self.d_model} is not divisible by heads {self.heads}")


@dataclass
class NarrowConfig:
    """A shrunk student narrower than its teacher (``init: shrink``): every weight cut to the narrower
    axes, the same evenly spaced indices everywhere (models.narrow_to)."""

    d_model: Optional[int] = doc("Hidden width, at most the teacher's; each attention head gets narrower (heads "
                                 "are kept). None keeps the teacher's.", None)
    d_ff: Optional[int] = doc("Feed-forward inner width, at most the teacher's. None keeps the teacher's.", None)

    def __post_init__(self):
        for name in ("d_model", "d_ff"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name), 2**18)


@dataclass
class TokenizerTrainConfig:
    """Train a tokenizer on the training split's sources and targets."""

    vocab_size: int = doc("Vocabulary size of the trained tokenizer, special tokens included.", 1000)
    model: str = doc("'bpe' (byte-level BPE) or 'unigram' (SentencePiece-style).", "bpe")
    lowercase: bool = doc("Lowercase text before tokenizing.", False)

    def __post_init__(self):
        _in_range("vocab_size", self.vocab_size, 32, 10_000_000)
        _choice("model", self.model, ("bpe", "unigram"))


@dataclass
class TokenizerConfig:
    """Where a model's tokenizer comes from. Exactly one of ``path`` or ``train``,
    or neither to load it from the model's ``name_or_path``."""

    path: Optional[str] = doc(
        "A tokenizer directory or file: tokenizer.json, spiece.model (SentencePiece), "
        "vocab.json + merges.txt (byte-level BPE) or vocab.txt (WordPiece). "
        "Relative paths are resolved against the config file's directory, then the working directory.",
        None,
    )
    train: Optional[TokenizerTrainConfig] = doc("Train a new tokenizer on the training split.", None)
    extra_ids: Optional[int] = doc("T5 SentencePiece only: number of <extra_id_*> sentinels (transformers' default 100).", None)

    def __post_init__(self):
        if self.path and self.train:
            raise ValueError("path: give either tokenizer.path or tokenizer.train, not both")
        if self.extra_ids is not None:
            _in_range("extra_ids", self.extra_ids, 0, 10_000)


def _template_fields(template: str, names: tuple[str, ...]) -> tuple[set[str], str | None]:
    """(placeholders used, what is wrong or None) for a text template. Templates are data: anything
    str.format would evaluate (attributes, indexes, conversions, format specs) is refused."""
    try:
        parsed = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # a lone brace
        return set(), str(e)
    for f, conv, spec in parsed:
        shown = "{" + f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        if f == "" or f.isdigit():
            return set(), f"{shown} is positional"
        if f not in names:
            attr = re.split(r"[.\[]", f, maxsplit=1)[0] in names
            return set(), f"{shown} {'reads an attribute or index' if attr else 'is not one of them'}"
        if conv or spec:
            return set(), f"{shown} has a {'conversion' if conv else 'format spec'}"
    return {f for f, _, _ in parsed}, None


@dataclass
class ModelConfig:
    """A teacher or a student model."""

    name_or_path: Optional[str] = doc(
        "Hub id (e.g. 't5-small') or local directory holding a saved model. "
        "Used with init 'pretrained'.", None)
    init: str = doc("'pretrained' (load name_or_path), 'scratch' (random init from arch) or, for the student, "
                    "'shrink' (the teacher's architecture with arch.encoder_layers / arch.decoder_layers layers "
                    "copied from evenly spaced teacher layers, DistilBART-style, narrower with narrow; the "
                    "teacher's tokenizer).", "pretrained")
    arch: ArchConfig = doc("Architecture for init 'scratch'; for 'shrink' only the layer counts are used (the "
                           "width: narrow).", factory=ArchConfig)
    narrow: Optional[NarrowConfig] = doc("Init 'shrink' only: a narrower student, e.g. {d_model: 128, d_ff: 512} "
                                         "(Xu et al., 2024's weight selection).", None)
    tokenizer: TokenizerConfig = doc("Tokenizer source.", factory=TokenizerConfig)
    kind: str = doc("'auto' (from the model's config.json), 'seq2seq' or, for the teacher, 'causal' (a decoder-only "
                    "LM such as Llama or GPT-2, loaded with AutoModelForCausalLM; it reads prompt_template followed "
                    "by the target, and may use another tokenizer than the student).", "auto")
    prompt_template: str = doc("Causal teacher only: the text before the target, with {prefix} (data.prefix) and "
                               "{source}.", "{prefix}{source}\n")

    def __post_init__(self):
        _choice("init", self.init, ("pretrained", "scratch", "shrink"))
        _choice("kind", self.kind, ("auto", "seq2seq", "causal"))
        fields, problem = _template_fields(self.prompt_template, ("prefix", "source"))
        if problem:
            raise ValueError(f"prompt_template: {self.prompt_template!r} is not a template of {{prefix}} and "
                             f"{{source}}: {problem}; use only those two placeholders, as they are (no attribute, "
                             f"index, !conversion or :format spec); write literal braces as {{{{ }}}}")
        if "source" not in fields:
            raise ValueError(f"prompt_template: {self.prompt_template!r} has no {{source}}; the teacher would not "
                             f"see the input")
        if self.kind == "causal" and self.init != "pretrained":
            raise ValueError("kind: a causal teacher is loaded from name_or_path (init pretrained); this tool trains "
                             "seq2seq models only")
        if self.init == "pretrained" and not self.name_or_path:
            raise ValueError("name_or_path: init 'pretrained' needs name_or_path (a hub id or a local directory), "
                             "or set init: scratch")
        if self.narrow is not None and self.init != "shrink":
            raise ValueError(f"narrow: narrows a student shrunk from its teacher (init shrink), not init "
                             f"{self.init!r}; set init: shrink or give the width in arch")
        if self.init == "scratch" and not (self.tokenizer.path or self.tokenizer.train or self.name_or_path):
            raise ValueError("tokenizer: init 'scratch' needs tokenizer.path or tokenizer.train")


# --------------------------------------------------------------------------- data
@dataclass
class SyntheticConfig:
    """A deterministic task the project generates itself (no files, no network)."""

    task: str = doc("Task name: a key of demo_data.SYNTHETIC_TASKS (polite_rewrite, keyword_summary).", "keyword_summary")
    num_examples: int = doc("Number of examples generated before splitting.", 4000)
    seed: int = doc("Generation seed (same seed, same data).", 0)
    unlabeled_examples: int = doc("Sources generated after the num_examples labeled ones, their targets thrown "
                                  "away: a transfer set only the teacher labels (needs distill.pseudo_labels; "
                                  "sources equal to a labeled one are left out).", 0)

    def __post_init__(self):
        _positive("num_examples", self.num_examples, 10**8)
        _in_range("unlabeled_examples", self.unlabeled_examples, 0, 10**8)
        _seed("seed", self.seed)


@dataclass
class DataConfig:
    """Training and evaluation data."""

    train_file: Optional[str] = doc("Local CSV, TSV, JSON, JSONL or Parquet file.", None)
    validation_file: Optional[str] = doc("Optional validation file (else split from train_file).", None)
    test_file: Optional[str] = doc("Optional test file (else split from train_file).", None)
    dataset_name: Optional[str] = doc("Hub dataset name, e.g. 'cnn_dailymail' (needs network).", None)
    dataset_config: Optional[str] = doc("Hub dataset configuration, e.g. '3.0.0'.", None)
    synthetic: Optional[SyntheticConfig] = doc("Generate a synthetic task instead of reading files.", None)
    format: str = doc("File format: 'auto' (from the extension), csv, tsv, json, jsonl or parquet.", "auto")
    encoding: str = doc("Text encoding of CSV/TSV/JSON files, e.g. 'utf-8' or 'cp1252'.", "utf-8")
    source_column: str = doc("Column holding the input text.", "source")
    target_column: Union[str, list[str]] = doc(
        "Column (or list of columns) holding reference outputs; several columns give several "
        "references per input (e.g. ParaDetox's neutral1..3).", "target")
    prefix: str = doc("Text prepended to every input, e.g. 'summarize: ' or 'detoxify: '.", "")
    max_source_length: int = doc("Inputs are truncated to this many tokens.", 512)
    max_target_length: int = doc("Targets are truncated to this many tokens.", 128)
    split_ratios: list[float] = doc(
        "train/validation/test fractions used when the data has a single split.", factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = doc("Seed of the split shuffle.", 42)
    train_on_all_references: bool = doc(
        "With several target columns, train on every non-empty reference (one pair each); "
        "otherwise only on the first non-empty one. Evaluation always uses all.", True)
    max_train_samples: Optional[int] = doc("Keep at most this many training examples.", None)
    max_eval_samples: Optional[int] = doc("Keep at most this many validation and test examples.", None)
    unlabeled_file: Optional[str] = doc(
        "Transfer set: a file of sources without references (same formats and encoding as train_file); "
        "distill_student has the teacher label them (needs distill.pseudo_labels) and trains on them too.", None)
    unlabeled_column: Optional[str] = doc("Column of unlabeled_file holding the sources (default: source_column).",
                                          None)

    def __post_init__(self):
        sources = [s for s in ("train_file", "dataset_name", "synthetic") if getattr(self, s)]
        if len(sources) > 1:
            raise ValueError(f"{sources[1]}: give one data source, not {' and '.join(sources)}")
        _choice("format", self.format, ("auto", "csv", "tsv", "json", "jsonl", "parquet"))
        _positive("max_source_length", self.max_source_length, MAX_TOKENS)
        _positive("max_target_length", self.max_target_length, MAX_TOKENS)
        _seed("split_seed", self.split_seed)
        if isinstance(self.target_column, list) and not self.target_column:
            raise ValueError("target_column: the list of target columns is empty")
        if len(self.split_ratios) != 3 or any(r < 0 for r in self.split_ratios) or not (
                abs(sum(self.split_ratios) - 1.0) < 1e-6 and self.split_ratios[0] > 0):
            raise ValueError(f"split_ratios: need three non-negative fractions summing to 1 with train > 0, "
                             f"got {self.split_ratios}")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))

    @property
    def target_columns(self) -> list[str]:
        return [self.target_column] if isinstance(self.target_column, str) else list(self.target_column)


# --------------------------------------------------------------------------- training
# Validation metrics that can pick the best checkpoint ('bleu' is an alias of 'bleu4').
BEST_METRICS = ("loss", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "bleu1", "bleu2", "bleu3", "bleu4",
                "sacrebleu", "chrf")


@dataclass
class OptimConfig:
    """Optimisation of one model (the teacher's or the student's run)."""

    epochs: int = doc("Passes over the training split (ignored when max_steps is set).", 3)
    max_steps: Optional[int] = doc("Total optimizer steps; overrides epochs.", None)
    batch_size: int = doc("Micro-batch size (examples per forward pass).", 16)
    eval_batch_size: int = doc("Batch size for validation.", 32)
    gradient_accumulation_steps: int = doc("Micro-batches per optimizer step.", 1)
    group_by_length: bool = doc("Batch pairs of similar length together (within a (seed, epoch)-shuffled order, "
                                "batches in random order) to cut padding; the log shows the padding before "
                                "and after.", True)
    autoencode_steps: int = doc("Copy warm-up for models trained from scratch on tasks whose output mostly repeats "
                                "the input (detoxification, paraphrase): during the first N optimizer steps a share "
                                "(autoencode_fraction) of every micro-batch's pairs become (source, source), so the "
                                "model learns to copy before it learns to edit. Which pairs is fixed by (seed, "
                                "epoch); 0 disables.", 0)
    autoencode_fraction: float = doc("Share of the pairs turned into (source, source) during autoencode_steps.", 0.5)
    random_copy_steps: int = doc("Copy pre-training for models trained from scratch: the first N optimizer steps train "
                                 "with cross-entropy alone on copying random_copy_length random vocabulary tokens "
                                 "(every sequence of one length), in place of those steps' training pairs. The ParaDetox "
                                 "teacher (BART 3+3, d256) learns it in ~100 steps, a 2+2 d128 one in ~500 (the log's "
                                 "loss falls to near 0), and keeps it on text, where copying text itself can take "
                                 "thousands of steps (README: the ParaDetox teacher). 0 disables.", 0)
    random_copy_length: int = doc("Tokens per random_copy_steps sequence (special tokens and data.prefix come on top).",
                                  24)
    learning_rate: float = doc("Peak learning rate of AdamW.", 5e-4)
    weight_decay: float = doc("AdamW weight decay (not applied to biases and norms).", 0.01)
    adam_betas: list[float] = doc("AdamW betas.", factory=lambda: [0.9, 0.999])
    scheduler: str = doc("transformers.get_scheduler name: linear, cosine, constant_with_warmup, ...", "linear")
    warmup_ratio: float = doc("Fraction of the total steps used for linear warm-up.", 0.05)
    max_grad_norm: Optional[float] = doc("Clip gradients to this global norm; null disables clipping.", 1.0)
    eval_every: Optional[int] = doc("Validate every N optimizer steps; null validates once per epoch.", None)
    metric_for_best: str = doc("Validation metric that picks the best checkpoint: 'loss' or a generation "
                               "metric such as 'rougeL', 'rouge1', 'bleu', 'sacrebleu'.", "loss")
    eval_generate_samples: int = doc("Validation examples decoded to compute generation metrics "
                                     "(only when metric_for_best is not 'loss').", 200)
    save_total_limit: int = doc("Keep this many most recent step checkpoints (plus the best).", 2)
    log_every: int = doc("Log training loss every N optimizer steps.", 10)

    _SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                   "constant_with_warmup", "inverse_sqrt")

    def __post_init__(self):
        for name, hi in (("epochs", 10**6), ("batch_size", 10**6), ("eval_batch_size", 10**6),
                         ("gradient_accumulation_steps", 10**6), ("save_total_limit", 10**6), ("log_every", None),
                         ("eval_generate_samples", None)):
            _positive(name, getattr(self, name), hi)
        for name, hi in (("max_steps", 10**9), ("eval_every", None)):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name), hi)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        _in_range("weight_decay", self.weight_decay, 0.0, 10.0)
        _in_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _in_range("autoencode_steps", self.autoencode_steps, 0, 10**9)
        _in_range("autoencode_fraction", self.autoencode_fraction, 0.0, 1.0)
        _in_range("random_copy_steps", self.random_copy_steps, 0, 10**9)
        _positive("random_copy_length", self.random_copy_length, 10**6)
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas: need two values in [0, 1), got {self.adam_betas}")
        _choice("scheduler", self.scheduler, self._SCHEDULERS)
        _choice("metric_for_best", self.metric_for_best, BEST_METRICS)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm: must be > 0 or null, got {self.max_grad_norm}")


@dataclass
class TrainingConfig:
    """Run-wide settings and the two optimisation blocks."""

    teacher: OptimConfig = doc("Optimisation of the teacher (train_teacher).", factory=OptimConfig)
    student: OptimConfig = doc("Optimisation of the student (distill_student).", factory=OptimConfig)
    seed: int = doc("Seed for model init, data order and dropout.", 42)
    device: str = doc("'auto' (CUDA when available), 'cpu' or 'cuda'.", "auto")
    precision: str = doc("'auto' (bf16 on CUDA when supported else fp16; fp32 on CPU), 'fp32', 'bf16' or "
                         "'fp16' (with a GradScaler).", "auto")
    output_dir: str = doc("Run directory: models, reports and the resolved config go here.", "runs/default")
    checkpoint_dir: Optional[str] = doc("Checkpoints directory (default: <output_dir>/checkpoints).", None)
    log_dir: Optional[str] = doc("Log directory (default: <output_dir>/logs).", None)
    num_threads: Optional[int] = doc("torch CPU threads (default: torch's choice).", None)
    train_teacher: bool = doc("full_pipeline trains the teacher first; false distills from teacher.name_or_path "
                              "as it is (an already fine-tuned teacher, e.g. a hub summarization model).", True)
    baseline: bool = doc("distill_student and full_pipeline also train the student with cross-entropy only on the "
                         "labeled pairs (stage student_ce: the same initialisation, seed, optimisation and number "
                         "of optimizer steps as the distilled student, no teacher); the benchmark reports the "
                         "distilled student against it with paired intervals. Also --with_baseline.", False)
    rendezvous_timeout: float = doc("Under torchrun: seconds every rank waits for the others to join (a line on "
                                    "stderr names the missing ones) before stopping with an error; the collectives "
                                    "after that wait up to 60 minutes.", 300.0)

    def __post_init__(self):
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads, 4096)
        _seed("seed", self.seed)
        if not 0 < self.rendezvous_timeout <= 86400:  # (also refuses NaN)
            raise ValueError(f"rendezvous_timeout: must be in (0, 86400] seconds, got {self.rendezvous_timeout}")
        for name in ("output_dir", "checkpoint_dir", "log_dir"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                default = "runs/default" if name == "output_dir" else f"null (default: under output_dir)"
                raise ValueError(f"{name}: is empty; give a directory (default {default})")


# --------------------------------------------------------------------------- distillation
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

    def __post_init__(self):
        if self.chunk_size is not None and self.chunk_size < 0:
            raise ValueError(f"chunk_size: must be >= 0 (0 = unchunked), got {self.chunk_size}")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight: must be >= 0, got {self.ce_weight}")
        if self.ce_weight == 0 and not any(s.weight > 0 for s in self.losses):
            raise ValueError("ce_weight: every weight is zero, the student would learn nothing")


# --------------------------------------------------------------------------- benchmark
TEXT_METRICS = ("rouge", "bleu", "sacrebleu", "chrf")
MODEL_METRICS = ("bertscore", "style_accuracy", "fluency_perplexity", "content_preservation")


@dataclass
class ExtraModel:
    """Another model to benchmark beside the teacher and the student, e.g. a baseline student."""

    name: str = doc("Its name in the reports (not 'teacher' or 'student').", "baseline")
    path: str = doc("A saved model directory (save_pretrained, with its tokenizer).", "")

    def __post_init__(self):
        if self.name in ("teacher", "student", "student_ce", "copy_source", "delete_toxic_words",
                         "untrained_student") or not self.name.strip():
            raise ValueError(f"name: {self.name!r} is taken or empty; choose another name")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            raise ValueError(f"name: {self.name[:70]!r} names the file predictions_<name>.jsonl in the run directory; "
                             f"use letters, digits, '_', '-' and '.' (at most 64, no '/')")
        if not self.path:
            raise ValueError("path: give the saved model directory")


@dataclass
class BenchmarkConfig:
    """Generation settings (identical for every compared model) and what to measure."""

    split: str = doc("Split to evaluate: 'test' or 'validation'.", "test")
    max_samples: Optional[int] = doc("Evaluate at most this many examples.", None)
    batch_size: int = doc("Generation batch size.", 32)
    num_beams: int = doc("Beam width (1 = greedy).", 1)
    max_new_tokens: int = doc("Longest generated output.", 64)
    no_repeat_ngram_size: int = doc("Forbid repeating n-grams of this size (0 = off).", 0)
    length_penalty: float = doc("Beam-search length penalty.", 1.0)
    bad_phrases: list[str] = doc("Phrases the models may not generate (turned into bad_words_ids).", factory=list)
    warmup_batches: int = doc("Untimed generation batches before timing.", 1)
    latency_samples: int = doc("Examples decoded one at a time (batch size 1) for latency p50/p95; 0 skips.", 20)
    metrics: list[str] = doc("Quality metrics: rouge, bleu, sacrebleu, chrf (reference-based); bertscore, and for "
                             "detoxification style_accuracy, fluency_perplexity, content_preservation (model-based: "
                             "skipped with a note in the report when their model cannot be loaded).",
                             factory=lambda: ["rouge", "bleu", "sacrebleu", "chrf", "bertscore"])
    bertscore_model: str = doc("BERTScore model: a bert_score model name (hub) or a local directory.", "roberta-large")
    bertscore_layers: Optional[int] = doc("BERTScore layer (null: bert_score's tuned layer for the model).", None)
    style_classifier: str = doc("Toxicity classifier for style_accuracy (name or directory).",
                                "s-nlp/roberta_toxicity_classifier")
    toxic_label: str = doc("The classifier's label for toxic text.", "toxic")
    fluency_model: str = doc("Causal LM whose perplexity measures fluency (name or directory).", "gpt2")
    bootstrap_samples: int = doc("Bootstrap resamples for confidence intervals and paired tests (0: none).", 1000)
    confidence: float = doc("Confidence level of the bootstrap intervals.", 0.95)
    models: list[ExtraModel] = doc("More models to evaluate, e.g. [{name: baseline, path: runs/b/student/final}]; "
                                   "the student is compared with each.", factory=list)
    baselines: list[str] = doc("Reference rows in the report: 'copy_source' (the input as the output), "
                               "'delete_toxic_words' (the input minus the words that the training split's "
                               "references delete, for detoxification data) and 'untrained_student' (the "
                               "student's architecture, random weights). A trained model below copy_source or "
                               "delete_toxic_words is flagged at the top of the report.", factory=list)

    def __post_init__(self):
        _choice("split", self.split, ("test", "validation", "train"))
        for name, hi in (("batch_size", 10**6), ("num_beams", 1000), ("max_new_tokens", MAX_TOKENS)):
            _positive(name, getattr(self, name), hi)
        if self.max_samples is not None:
            _positive("max_samples", self.max_samples)
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size: must be >= 0, got {self.no_repeat_ngram_size}")
        if self.warmup_batches < 0:
            raise ValueError(f"warmup_batches: must be >= 0, got {self.warmup_batches}")
        if self.latency_samples < 0:
            raise ValueError(f"latency_samples: must be >= 0, got {self.latency_samples}")
        for m in self.metrics:
            _choice("metrics", m, TEXT_METRICS + MODEL_METRICS)
        for name in ("metrics", "baselines"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {values} names one twice; list each once")
        if any(not phrase.strip() for phrase in self.bad_phrases):
            raise ValueError("bad_phrases: an empty phrase blocks nothing; remove it")
        if self.bootstrap_samples < 0:
            raise ValueError(f"bootstrap_samples: must be >= 0, got {self.bootstrap_samples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence: must be in [0.5, 1), got {self.confidence}")
        for b in self.baselines:
            _choice("baselines", b, ("copy_source", "delete_toxic_words", "untrained_student"))
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: two models share a name ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); "
                             f"each needs its own (it names its predictions file)")


@dataclass
class Config:
    """The whole run."""

    teacher: ModelConfig = doc("The teacher model.", factory=lambda: ModelConfig(name_or_path="t5-base"))
    student: ModelConfig = doc("The student model.", factory=lambda: ModelConfig(name_or_path="t5-small"))
    data: DataConfig = doc("Training and evaluation data.", factory=DataConfig)
    training: TrainingConfig = doc("Optimisation and run settings.", factory=TrainingConfig)
    distill: DistillConfig = doc("The student's objective.", factory=DistillConfig)
    benchmark: BenchmarkConfig = doc("Benchmark settings.", factory=BenchmarkConfig)

    def __post_init__(self):
        syn = self.data.synthetic
        for key, on in (("unlabeled_file", self.data.unlabeled_file),
                        ("synthetic.unlabeled_examples", syn and syn.unlabeled_examples)):
            if on and self.distill.pseudo_labels is None:
                raise ValueError(f"data.{key}: sources without references are labelled by the teacher; set "
                                 f"distill.pseudo_labels (e.g. {{num_beams: 4}}) or remove data.{key}")
        if self.distill.teacher_cache is not None and self.training.student.autoencode_steps:
            raise ValueError("training.student.autoencode_steps: the teacher cache holds the teacher's outputs for "
                             "the training pairs only, not for (source, source) copies; set it to 0 or drop "
                             "distill.teacher_cache")
        if self.teacher.init == "shrink":
            raise ValueError("teacher.init: 'shrink' is for the student (it copies layers from the teacher)")
        if self.student.kind == "causal":
            raise ValueError("student.kind: the student is a seq2seq model; 'causal' is for the teacher")
        for role in ("teacher", "student"):
            m = getattr(self, role)
            if m.init == "scratch" and m.arch.type == "bart":
                check_positions(self, m.arch.max_positions, f"{role}.arch.max_positions",
                                "raise max_positions or lower")


def check_positions(cfg: Config, limit: int, owner: str, fix: str) -> None:
    """Learned position tables (BART) cannot index past their ``limit``: refuse lengths that do
    not fit (T5's relative positions have no limit). ``owner`` names the limit, ``fix`` starts the fix."""
    for key, n in (("data.max_source_length", cfg.data.max_source_length),
                   ("data.max_target_length", cfg.data.max_target_length),
                   ("benchmark.max_new_tokens", cfg.benchmark.max_new_tokens + 1)):
        if n > limit:
            raise ValueError(f"{owner}: {limit} positions cannot hold {key} ({n}); {fix} {key}")


# --------------------------------------------------------------------------- validators
MAX_TOKENS = 2**20  # longer than any sequence a seq2seq model of today attends over
MAX_PARAMETERS = 1e11  # 400 GB of fp32 weights, before gradients and optimizer state


def _positive(name, value, hi=None):
    if value is None or value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name}: {value:,} is beyond what any run can allocate; must be <= {hi:,}")


def _seed(name, value):
    # numpy accepts seeds in [0, 2**32); the data order derives seed * 1000 + epoch for torch's 64-bit generator
    _in_range(name, value, 0, 2**32 - 1)


def _in_range(name, value, lo, hi, hi_open=False):
    if value < lo or value > hi or (hi_open and value == hi):
        raise ValueError(f"{name}: must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")
