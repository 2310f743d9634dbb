"""The teacher and student sections: architecture, initialisation, tokenizer."""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Optional

from settings.fields import MAX_PARAMETERS, MAX_TOKENS, _choice, _in_range, _positive, doc


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
    fields = re.findall(r"\{[^{}]*\}", re.sub(r"\{\{|\}\}", "", template))
    if odd := [f for f in fields if f[1:-1] not in names]:  # what parse reports alike: "{source:}", "{source!}"
        return set(), f"{odd[0]} has a format spec or conversion"
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
        if self.init == "pretrained" and self.tokenizer.train:
            raise ValueError("tokenizer.train: a pretrained model reads the tokenizer it was trained with (its "
                             "embeddings are indexed by it); set tokenizer.train to null, or init: scratch")
        if self.narrow is not None and self.init != "shrink":
            raise ValueError(f"narrow: narrows a student shrunk from its teacher (init shrink), not init "
                             f"{self.init!r}; set init: shrink or give the width in arch")
        if self.init == "scratch" and not (self.tokenizer.path or self.tokenizer.train or self.name_or_path):
            raise ValueError("tokenizer: init 'scratch' needs tokenizer.path or tokenizer.train")
