"""The data section: files, a hub dataset or the synthetic task, columns, lengths, splits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from settings.fields import MAX_TOKENS, _choice, _in_range, _positive, _seed, doc


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
    strip_quotes: bool = doc("Remove one pair of double quotes wrapping a whole text, in the files' sources and "
                             "references (some exports keep them literally, e.g. ParaDetox's "
                             "paradetox_cannot_rewrite.tsv: \"\"\"text\"\"\" in the file).", False)
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
