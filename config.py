"""Configuration schema: one dataclass per config section, parsed from JSON or YAML.

A config file has the sections ``teacher``, ``student``, ``data``, ``training``,
``distill`` and ``benchmark``. Each field below carries its documentation in
``metadata["doc"]`` (rendered into the README's config reference by
``python main.py --print-config-reference``). Every field can be overridden on the
command line with ``--set section.key=value`` (the value is parsed as YAML).

Errors are raised as :class:`utils.UserError` with one line naming the file and
the key, so ``main.py`` can print it and exit with code 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from utils import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
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
        for name in ("d_model", "encoder_layers", "decoder_layers", "heads", "d_ff", "max_positions"):
            _positive(name, getattr(self, name))
        _in_range("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if self.d_model % self.heads:
            raise ValueError(f"heads: d_model {self.d_model} is not divisible by heads {self.heads}")


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


@dataclass
class ModelConfig:
    """A teacher or a student model."""

    name_or_path: Optional[str] = doc(
        "Hub id (e.g. 't5-small') or local directory holding a saved model. "
        "Used with init 'pretrained'.", None)
    init: str = doc("'pretrained' (load name_or_path), 'scratch' (random init from arch) or, for the student, "
                    "'shrink' (the teacher's architecture with arch.encoder_layers / arch.decoder_layers layers "
                    "copied from evenly spaced teacher layers, DistilBART-style; the teacher's tokenizer).",
                    "pretrained")
    arch: ArchConfig = doc("Architecture for init 'scratch'; for 'shrink' only the layer counts are used.",
                           factory=ArchConfig)
    tokenizer: TokenizerConfig = doc("Tokenizer source.", factory=TokenizerConfig)

    def __post_init__(self):
        _choice("init", self.init, ("pretrained", "scratch", "shrink"))
        if self.init == "pretrained" and not self.name_or_path:
            raise ValueError("name_or_path: init 'pretrained' needs name_or_path (a hub id or a local directory), "
                             "or set init: scratch")
        if self.init == "scratch" and not (self.tokenizer.path or self.tokenizer.train or self.name_or_path):
            raise ValueError("tokenizer: init 'scratch' needs tokenizer.path or tokenizer.train")


# --------------------------------------------------------------------------- data
@dataclass
class SyntheticConfig:
    """A deterministic task the project generates itself (no files, no network)."""

    task: str = doc("Task name: a key of demo_data.SYNTHETIC_TASKS (polite_rewrite, keyword_summary).", "keyword_summary")
    num_examples: int = doc("Number of examples generated before splitting.", 4000)
    seed: int = doc("Generation seed (same seed, same data).", 0)

    def __post_init__(self):
        _positive("num_examples", self.num_examples)


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

    def __post_init__(self):
        sources = [s for s in ("train_file", "dataset_name", "synthetic") if getattr(self, s)]
        if len(sources) > 1:
            raise ValueError(f"{sources[1]}: give one data source, not {' and '.join(sources)}")
        _choice("format", self.format, ("auto", "csv", "tsv", "json", "jsonl", "parquet"))
        _positive("max_source_length", self.max_source_length)
        _positive("max_target_length", self.max_target_length)
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

    @property
    def has_source(self) -> bool:
        return bool(self.train_file or self.dataset_name or self.synthetic)


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
        for name in ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps",
                     "save_total_limit", "log_every", "eval_generate_samples"):
            _positive(name, getattr(self, name))
        for name in ("max_steps", "eval_every"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        _in_range("weight_decay", self.weight_decay, 0.0, 10.0)
        _in_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
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

    def __post_init__(self):
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads)


# --------------------------------------------------------------------------- distillation
@dataclass
class LossSpec:
    """One distillation term: ``weight * loss``. Loss-specific options go in ``params``-style
    extra keys (e.g. ``temperature``); ``distiller_zoo.build_loss`` validates them."""

    name: str = doc("Loss name from distiller_zoo.LOSSES, e.g. 'vanilla_kl'.", "vanilla_kl")
    weight: float = doc("Weight of this term in the total loss.", 1.0)
    params: dict = doc("Loss options, e.g. {temperature: 2.0}. Also accepted as keys beside name/weight.",
                       factory=dict)

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"weight: must be >= 0, got {self.weight}")


@dataclass
class DistillConfig:
    """The student's objective: ``ce_weight * CE + sum_i weight_i * loss_i``.

    ``alpha * CE + (1 - alpha) * KD`` is ce_weight=alpha with KD weight 1-alpha;
    ``CE + lambda * KD`` is ce_weight=1 with KD weight lambda."""

    ce_weight: float = doc("Weight of the student's cross-entropy on the references.", 0.5)
    losses: list[LossSpec] = doc("Distillation terms.", factory=lambda: [LossSpec()])

    def __post_init__(self):
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight: must be >= 0, got {self.ce_weight}")
        if self.ce_weight == 0 and not any(s.weight > 0 for s in self.losses):
            raise ValueError("ce_weight: every weight is zero, the student would learn nothing")


# --------------------------------------------------------------------------- benchmark
TEXT_METRICS = ("rouge", "bleu", "sacrebleu", "chrf")
MODEL_METRICS = ("bertscore", "style_accuracy", "fluency", "content_preservation")


@dataclass
class ExtraModel:
    """Another model to benchmark beside the teacher and the student, e.g. a baseline student."""

    name: str = doc("Its name in the reports (not 'teacher' or 'student').", "baseline")
    path: str = doc("A saved model directory (save_pretrained, with its tokenizer).", "")

    def __post_init__(self):
        if self.name in ("teacher", "student", "copy_source", "untrained_student") or not self.name.strip():
            raise ValueError(f"name: {self.name!r} is taken or empty; choose another name")
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
                             "detoxification style_accuracy, fluency, content_preservation (model-based: skipped with "
                             "a note in the report when their model cannot be loaded).",
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
    baselines: list[str] = doc("Reference rows in the report: 'copy_source' (the input as the output) and "
                               "'untrained_student' (the student's architecture, random weights).", factory=list)

    def __post_init__(self):
        _choice("split", self.split, ("test", "validation", "train"))
        for name in ("batch_size", "num_beams", "max_new_tokens"):
            _positive(name, getattr(self, name))
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
        if self.bootstrap_samples < 0:
            raise ValueError(f"bootstrap_samples: must be >= 0, got {self.bootstrap_samples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence: must be in [0.5, 1), got {self.confidence}")
        for b in self.baselines:
            _choice("baselines", b, ("copy_source", "untrained_student"))


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
        if self.teacher.init == "shrink":
            raise ValueError("teacher.init: 'shrink' is for the student (it copies layers from the teacher)")
        for role in ("teacher", "student"):
            m = getattr(self, role)
            if m.init != "scratch" or m.arch.type != "bart":
                continue
            for key, n in (("data.max_source_length", self.data.max_source_length),
                           ("data.max_target_length", self.data.max_target_length),
                           ("benchmark.max_new_tokens", self.benchmark.max_new_tokens + 1)):
                if n > m.arch.max_positions:
                    raise ValueError(f"{role}.arch.max_positions: {m.arch.max_positions} positions cannot hold "
                                     f"{key} ({n}); raise max_positions or lower {key}")


# --------------------------------------------------------------------------- validators
def _positive(name, value):
    if value is None or value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")


def _in_range(name, value, lo, hi, hi_open=False):
    if value < lo or value > hi or (hi_open and value == hi):
        raise ValueError(f"{name}: must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")


# --------------------------------------------------------------------------- parsing
def read_config_file(path: str | Path) -> dict:
    """Read a JSON or YAML file into a dict, with one-line errors."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a config file; give --config a .json or .yaml file")
    if not path.is_file():
        raise UserError(f"config file not found: {path} (check the path given to --config)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at position {e.start}); "
                        f"save the config as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``; errors name the dotted key."""
    if not isinstance(data, dict):
        raise _KeyError(where, f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    data = dict(data)
    if cls is LossSpec:  # loss options may sit beside name/weight
        params = dict(data.pop("params", {}) or {})
        params.update({k: data.pop(k) for k in list(data) if k not in names})
        data["params"] = params
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(names)})"
            raise _KeyError(_join(where, key), f"unknown key{hint}")
        kwargs[key] = _convert(hints[key], value, _join(where, key))
    try:
        return cls(**kwargs)
    except ValueError as e:
        key, _, msg = str(e).partition(": ")
        raise _KeyError(_join(where, key), msg) from None


class _KeyError(Exception):
    def __init__(self, key, msg):
        super().__init__(f"{key}: {msg}")
        self.key, self.msg = key, msg


def _join(where, key):
    return f"{where}.{key}" if where else key


def _convert(tp, value, where):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except _KeyError as e:
                errors.append(e)
        # report the most specific failure (a nested key) or a type summary
        nested = [e for e in errors if e.key != where]
        if nested:
            raise nested[0]
        raise _KeyError(where, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where)
    if origin is list:
        if not isinstance(value, list):
            raise _KeyError(where, f"expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _KeyError(where, f"expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-5 (no dot) as a string; accept what is plainly a number
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is Any:
        return value
    raise _KeyError(where, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _type_name(tp):
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        return "a list of mappings" if dataclasses.is_dataclass(item) else f"a list of {_type_name(item)}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'training.student.learning_rate=3e-4'`` -> (['training','student','learning_rate'], 3e-4)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set training.seed=1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw  # 'detoxify: ' is a prefix string, not a one-key mapping
    return key.strip().split("."), value


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: mappings merge, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] = (),
                sections: dict[str, str | Path] | None = None) -> Config:
    """Load ``path`` (or the embedded demo), merge per-section files and ``--set`` overrides.

    ``sections`` maps a section name ('teacher', 'student') to a file holding that section
    (either the bare section or a mapping with that one key)."""
    path = Path(path) if path else DEMO_CONFIG
    raw = read_config_file(path)
    origin = {k: str(path) for k in raw}
    for name, file in (sections or {}).items():
        part = read_config_file(file)
        part = part[name] if set(part) == {name} else part
        raw = merge(raw, {name: part})
        origin[name] = str(file)
    for text in overrides:
        keys, value = parse_override(text)
        nested = value
        for k in reversed(keys):
            nested = {k: nested}
        raw = merge(raw, nested)
        origin[keys[0]] = f"--set {text}"
    try:
        cfg = from_dict(Config, raw)
    except _KeyError as e:
        src = origin.get(e.key.split(".")[0].split("[")[0], str(path))
        raise UserError(f"{src}: {e.key}: {e.msg}") from None
    cfg_base = path.resolve().parent
    _resolve_paths(cfg, cfg_base)
    return cfg


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Relative file paths are tried against the config's directory, then the cwd."""
    def fix(p):
        if p is None or Path(p).is_absolute() or Path(p).exists():
            return p
        cand = base / p
        return str(cand) if cand.exists() else p
    for m in (cfg.teacher, cfg.student):
        m.tokenizer.path = fix(m.tokenizer.path)
        if m.name_or_path and ("/" in m.name_or_path or m.name_or_path.startswith(".")):
            m.name_or_path = fix(m.name_or_path)
    for f in ("train_file", "validation_file", "test_file"):
        setattr(cfg.data, f, fix(getattr(cfg.data, f)))
    for extra in cfg.benchmark.models:
        extra.path = fix(extra.path)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n", encoding="utf-8")


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config stored in a checkpoint or a run directory."""
    return from_dict(Config, data)


def reference_markdown() -> str:
    """The README's config reference, generated from the field docs (tests keep the README current)."""
    lines: list[str] = []
    seen: dict[type, str] = {}
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        _reference(hints[section.name], section.name, lines, seen)
    return "\n".join(lines).strip() + "\n"


def _reference(cls, prefix, lines, seen):
    if cls in seen:
        lines.append(f"\n#### `{prefix}`\n\nSame keys as `{seen[cls]}`.")
        return
    seen[cls] = prefix
    hints = typing.get_type_hints(cls)
    summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    lines.append(f"\n#### `{prefix}`\n\n{summary.replace('``', '`')}\n")
    lines.append("| key | type | default | meaning |\n|---|---|---|---|")
    nested = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or (
            [tp] if dataclasses.is_dataclass(tp) else [])
        if inner:
            default = "see below"
        else:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            default = f"`{json.dumps(value)}`"
        lines.append(f"| `{f.name}` | {_type_name(tp)} | {default} | {f.metadata.get('doc', '')} |")
        nested += [(a, f"{prefix}.{f.name}") for a in inner]
    for cls2, p in nested:
        _reference(cls2, p, lines, seen)


def write_readme_reference(readme: Path = Path(__file__).resolve().parent / "README.md") -> None:
    """Replace the README's generated config reference (between its two markers)."""
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(start, 1)
    readme.write_text(head + start + reference_markdown() + end + rest.split(end, 1)[1], encoding="utf-8")


if __name__ == "__main__":  # python config.py: refresh the README's config reference
    write_readme_reference()
