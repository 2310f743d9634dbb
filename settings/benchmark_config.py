"""The benchmark section: decoding settings and what to measure."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from settings.fields import MAX_TOKENS, _choice, _positive, doc


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
