"""Detoxification metrics: style accuracy, fluency (perplexity) and content preservation.

The three axes of the ParaDetox-style evaluation, each from a model given by hub name or
local directory, each returning :class:`MetricResult` or, when the model cannot be
loaded, :class:`MetricSkipped` with the reason (see :mod:`metrics.results`).

* :func:`style_accuracy`: a toxicity classifier (``AutoModelForSequenceClassification``).
  ``style_accuracy`` = 100 x mean over predictions of 1 - P(toxic) (a soft score);
  ``style_nontoxic_pct`` = 100 x fraction of predictions whose most likely label is not
  the toxic one (the hard STA of the ParaDetox paper).
* :func:`fluency_perplexity`: a causal LM (GPT-2 style). Per prediction,
  PPL = exp(mean over its tokens of -log p(token | BOS, earlier tokens)); the BOS (or EOS)
  token is given as context and not scored, so every token of the text is scored.
  ``fluency_perplexity`` is the mean of the per-prediction PPLs (lower is more fluent; not on a
  0-100 scale). Empty predictions have no tokens: they are excluded and counted in notes.
* :func:`content_preservation`: BERTScore F1 (x 100) between each source and its output.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional, Union

from metrics.bertscore import bertscore
from metrics.results import (MetricOutcome, MetricResult, MetricSkipped, ModelUnavailable, cached_model,
                             load_pretrained)

if TYPE_CHECKING:  # torch is imported when a metric runs, not with the package
    import torch

DEFAULT_TOXICITY_CLASSIFIER = "s-nlp/roberta_toxicity_classifier"  # ParaDetox's STA classifier
DEFAULT_FLUENCY_LM = "gpt2"


class _Loaded(NamedTuple):
    model: "torch.nn.Module"
    tokenizer: object


def _load(auto_class: str, name: str, what: str, device: str) -> _Loaded:
    """Model and tokenizer (cached) by name or path; raises :class:`ModelUnavailable`."""
    import transformers

    def build():
        model = load_pretrained(getattr(transformers, auto_class).from_pretrained, name, what)
        tok = load_pretrained(transformers.AutoTokenizer.from_pretrained, name, f"{what} tokenizer")
        return _Loaded(model.to(device).eval(), tok)
    return cached_model((auto_class, name, str(device)), build)


def _max_length(tokenizer, model) -> int:
    """Longest input: the tokenizer's limit, capped by the model's position table (1024 if unknown)."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1024
    return int(min(tokenizer.model_max_length, positions))


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------- style
def _label_index(config, label: Union[int, str]) -> int:
    """Index of ``label`` (an int, or a name in config.label2id, case-insensitive)."""
    n = config.num_labels
    if isinstance(label, int):
        if 0 <= label < n:
            return label
        raise ValueError(f"toxic_label {label} is out of range for {n} labels")
    by_name = {str(k).lower(): int(v) for k, v in config.label2id.items()}
    if str(label).lower() in by_name:
        return by_name[str(label).lower()]
    raise ValueError(f"no label {label!r} (labels: {', '.join(map(str, config.label2id))}); set toxic_label")


def _toxic_probabilities(clf: _Loaded, texts: Sequence[str], toxic: int, batch_size: int, device: str
                         ) -> tuple[list[float], list[bool]]:
    """P(toxic) of each text (softmax in float32) and whether toxic is its most likely label."""
    import torch
    probs, argmax_toxic = [], []
    limit = _max_length(clf.tokenizer, clf.model) - 2  # RoBERTa-style position offset
    for batch in _batches(list(texts), batch_size):
        enc = clf.tokenizer(batch, padding=True, truncation=True, max_length=limit, return_tensors="pt").to(device)
        with torch.no_grad():
            p = clf.model(**enc).logits.float().softmax(-1)
        probs += p[:, toxic].tolist()
        argmax_toxic += (p.argmax(-1) == toxic).tolist()
    return probs, argmax_toxic


def style_accuracy(predictions: Sequence[str], classifier_path_or_name: str = DEFAULT_TOXICITY_CLASSIFIER,
                   toxic_label: Union[int, str] = "toxic", batch_size: int = 32, device: str = "cpu"
                   ) -> MetricOutcome:
    """``style_accuracy`` = 100 x mean(1 - P(toxic)); ``style_nontoxic_pct`` = 100 x fraction
    whose argmax label is not toxic. ``toxic_label`` is an index or a label name."""
    name = "style_accuracy"
    try:
        clf = _load("AutoModelForSequenceClassification", classifier_path_or_name, "toxicity classifier", device)
        toxic = _label_index(clf.model.config, toxic_label)
    except (ModelUnavailable, ValueError) as e:
        return MetricSkipped(name, f"{classifier_path_or_name}: {e}" if isinstance(e, ValueError) else str(e))
    probs, is_toxic = _toxic_probabilities(clf, predictions, toxic, batch_size, str(device))
    per = {"style_accuracy": [100.0 * (1.0 - p) for p in probs],
           "style_nontoxic_pct": [0.0 if t else 100.0 for t in is_toxic]}
    label = clf.model.config.id2label.get(toxic, toxic)
    return MetricResult(name, {k: sum(v) / len(v) for k, v in per.items()}, per,
                        signature=f"{classifier_path_or_name}|toxic={label}")


# --------------------------------------------------------------------------- fluency
def _perplexities(lm: _Loaded, texts: Sequence[str], batch_size: int, device: str) -> list[float]:
    """exp(mean token NLL) of each (non-empty) text with BOS/EOS as unscored context."""
    import torch
    tok, model = lm.tokenizer, lm.model
    context = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    limit = _max_length(tok, model) - 1
    out = []
    for batch in _batches(list(texts), batch_size):
        ids = [[context] + tok(t, add_special_tokens=False).input_ids[:limit] for t in batch]
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [context] * (width - len(x)) for x in ids], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
        with torch.no_grad():
            logp = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]
        out += torch.exp(nll.sum(1) / mask[:, 1:].sum(1)).tolist()
    return out


def fluency_perplexity(predictions: Sequence[str], lm_path_or_name: str = DEFAULT_FLUENCY_LM,
                       batch_size: int = 16, device: str = "cpu") -> MetricOutcome:
    """``fluency_perplexity`` = mean over non-empty predictions of exp(mean token NLL) under a causal LM.

    ``per_example["fluency_perplexity"]`` has ``None`` for the excluded empty predictions.
    """
    name = "fluency_perplexity"
    try:
        lm = _load("AutoModelForCausalLM", lm_path_or_name, "fluency LM", device)
    except ModelUnavailable as e:
        return MetricSkipped(name, str(e))
    if lm.tokenizer.bos_token_id is None and lm.tokenizer.eos_token_id is None:
        return MetricSkipped(name, f"{lm_path_or_name}: its tokenizer has no BOS or EOS token to condition on")
    kept = [i for i, p in enumerate(predictions) if p.strip()]
    if not kept:
        return MetricSkipped(name, "every prediction is empty; perplexity is undefined")
    ppl = _perplexities(lm, [predictions[i] for i in kept], batch_size, str(device))
    per: list[Optional[float]] = [None] * len(predictions)
    for i, v in zip(kept, ppl):
        per[i] = v
    empty = len(predictions) - len(kept)
    notes = (f"{name}: {empty} empty prediction(s) excluded",) if empty else ()
    return MetricResult(name, {name: sum(ppl) / len(ppl)}, {name: per}, notes, signature=lm_path_or_name)


# --------------------------------------------------------------------------- content
def content_preservation(sources: Sequence[str], predictions: Sequence[str],
                         model_type_or_path: str = "roberta-large", num_layers: Optional[int] = None,
                         batch_size: int = 64, device: str = "cpu") -> MetricOutcome:
    """``content_preservation`` = BERTScore F1 (x 100) of each prediction against its source."""
    name = "content_preservation"
    if len(sources) != len(predictions):
        raise ValueError(f"got {len(sources)} sources but {len(predictions)} predictions")
    r = bertscore(predictions, [[s] for s in sources], model_type_or_path, num_layers, batch_size, device)
    if not r.ok:
        return MetricSkipped(name, r.reason)
    return MetricResult(name, {name: r.scores["bertscore_f1"]}, {name: r.per_example["bertscore_f1"]},
                        tuple(n.replace("bertscore:", f"{name}:", 1) for n in r.notes), r.signature)
