"""BERTScore through the ``bert_score`` library, guarded for offline use and transformers 5.

BERTScore (Zhang et al., 2020) embeds candidate and reference with one layer of a
pretrained encoder and matches tokens greedily by cosine similarity:
P = mean over candidate tokens of the best cosine with a reference token, R = the same
from the reference side, F1 = 2PR / (P + R). No idf weighting, no baseline rescaling
(bert_score's defaults), so scores of different models or layers are not comparable.
Reported x 100. With several references, each of P, R and F1 is the maximum over the
references separately, as ``bert_score.BERTScorer.score`` does with a list of lists.

What this module adds to ``bert_score.utils`` (``get_model`` and
``bert_cos_score_idf``, the functions ``bert_score.score`` runs):

* **Loading**: through :func:`metrics.results.load_pretrained` (local directory, then
  cache, the hub only when reachable); a cached hub model is loaded from its snapshot
  directory, so no network request is made. Unavailable -> :class:`MetricSkipped`.
* **Layer**: ``num_layers=None`` takes bert_score's tuned default for the model name
  (``model2layers``, also matched by a local directory's base name, e.g.
  ``/models/roberta-large`` -> 17); for an unknown model, its last layer (noted).
* **Empty candidates**: with transformers 5, bert_score crashes on an empty or
  whitespace-only candidate (``sent_encode`` calls the removed
  ``build_inputs_with_special_tokens``: ``AttributeError``). They are scored
  P = R = F1 = 0 without calling the model, which is what bert_score intends
  ("Empty candidate sentence detected; setting raw BERTscores to 0"), and counted in notes.
* **RoBERTa/GPT-2 tokenizers**: bert_score asks ``encode`` for ``add_prefix_space=True``;
  transformers 5 ignores that argument, so the tokenizer is built with it instead
  (otherwise the first word is tokenized without its leading space).
* **Length**: a tokenizer without ``model_max_length`` (1e30) makes transformers 5 fail
  with ``OverflowError`` when bert_score truncates; it is capped at the model's positions.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

from metrics.core import _check_inputs
from metrics.results import (MetricOutcome, MetricResult, MetricSkipped, ModelUnavailable, cached_model,
                             load_pretrained, one_line)

if TYPE_CHECKING:  # torch is imported when a metric runs, not with the package
    import torch

BERTSCORE_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")


class _Encoder(NamedTuple):
    model: "torch.nn.Module"
    tokenizer: object
    num_layers: int
    note: Optional[str]  # e.g. the layer choice for an unknown model


# --------------------------------------------------------------------------- loading
def _locate(name: str, local_files_only: bool = False) -> str:
    """What bert_score should load: a cached hub model's snapshot directory (no network);
    when downloading is allowed, the name itself (after checking the hub knows it)."""
    from transformers.utils import cached_file
    config_file = cached_file(name, "config.json", local_files_only=local_files_only)
    return str(Path(config_file).parent) if local_files_only else name


def _default_layers(name: str, source: str) -> tuple[int, Optional[str]]:
    """bert_score's tuned layer for ``name`` (or a directory's base name), else the last layer."""
    from bert_score.utils import model2layers
    for key in (name, Path(name).name):
        if key in model2layers:
            return model2layers[key], None
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(source)
    last = getattr(config, "num_hidden_layers", None) or config.num_layers
    return last, f"bertscore: no tuned layer for {name}; using its last layer ({last}); set num_layers to choose"


def _tokenizer(source: str, model: "torch.nn.Module"):
    """The tokenizer bert_score would build, made to behave under transformers 5 (see module doc)."""
    from bert_score.utils import GPT2Tokenizer, RobertaTokenizer  # the classes bert_score special-cases
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(source, use_fast=False)
    if isinstance(tok, (GPT2Tokenizer, RobertaTokenizer)):
        tok = AutoTokenizer.from_pretrained(source, use_fast=False, add_prefix_space=True)
    if tok.model_max_length > 100_000:  # unset: transformers' VERY_LARGE_INTEGER
        positions = getattr(model.config, "max_position_embeddings", None) or 514
        tok.model_max_length = min(512, positions - 2)  # RoBERTa-style position offset of 2
    return tok


def _load_encoder(name: str, num_layers: Optional[int], device: str) -> _Encoder:
    from bert_score.utils import get_model
    source = load_pretrained(_locate, name, "BERTScore model")
    try:
        layers, note = (num_layers, None) if num_layers is not None else _default_layers(name, source)
        model = get_model(source, layers).to(device)
        return _Encoder(model, _tokenizer(source, model), layers, note)
    except Exception as e:  # noqa: BLE001 - a model that cannot be built is a skip
        raise ModelUnavailable(f"BERTScore model {name}: cannot load it ({type(e).__name__}: {one_line(e)})") from None


def load_encoder(name: str, num_layers: Optional[int] = None, device: str = "cpu") -> _Encoder:
    """The (cached) encoder for ``name``; raises :class:`ModelUnavailable` with the reason."""
    return cached_model(("bertscore", name, num_layers, str(device)),
                        lambda: _load_encoder(name, num_layers, str(device)))


# --------------------------------------------------------------------------- scoring
def _prf(enc: _Encoder, predictions: Sequence[str], references: list[list[str]], batch_size: int,
         device: str) -> "torch.Tensor":
    """(n, 3) P, R, F1 in [0, 1]: best over each example's references; 0 for empty predictions."""
    import torch
    from bert_score.utils import bert_cos_score_idf
    out = torch.zeros(len(predictions), 3)
    kept = [i for i, p in enumerate(predictions) if p.strip()]
    cands = [predictions[i] for i in kept for _ in references[i]]
    refs = [r for i in kept for r in references[i]]
    if not cands:
        return out
    idf = defaultdict(lambda: 1.0)  # no idf, as BERTScorer(idf=False): special tokens weigh 0
    idf[enc.tokenizer.sep_token_id] = idf[enc.tokenizer.cls_token_id] = 0
    flat = bert_cos_score_idf(enc.model, refs, cands, enc.tokenizer, idf, batch_size=batch_size,
                              device=device).cpu()
    start = 0
    for i in kept:
        end = start + len(references[i])
        out[i] = flat[start:end].max(dim=0).values
        start = end
    return out


def bertscore(predictions: Sequence[str], references: Sequence[Sequence[str]],
              model_type_or_path: str = "roberta-large", num_layers: Optional[int] = None,
              batch_size: int = 64, device: str = "cpu") -> MetricOutcome:
    """BERTScore P, R, F1 (x 100) of each prediction against its references.

    Returns ``MetricResult("bertscore", scores, per_example, notes)`` with ``scores`` the
    means over examples of ``bertscore_precision``, ``bertscore_recall``, ``bertscore_f1``
    and ``per_example`` the same three lists (for :func:`bootstrap_ci`); or
    ``MetricSkipped("bertscore", reason)`` when the model cannot be loaded.
    """
    refs = _check_inputs(predictions, references)
    try:
        enc = load_encoder(model_type_or_path, num_layers, device)
    except ModelUnavailable as e:
        return MetricSkipped("bertscore", str(e))
    prf = 100.0 * _prf(enc, predictions, refs, batch_size, str(device)).double()
    per = {k: prf[:, j].tolist() for j, k in enumerate(BERTSCORE_KEYS)}
    empty = sum(1 for p in predictions if not p.strip())
    notes = tuple(n for n in (enc.note, f"bertscore: {empty} empty prediction(s) scored 0" if empty else None) if n)
    return MetricResult("bertscore", {k: sum(v) / len(v) for k, v in per.items()}, per, notes,
                        signature(model_type_or_path, enc.num_layers))


def signature(model_type_or_path: str, num_layers: int) -> str:
    """The settings that determine the numbers, e.g.
    ``roberta-large|L17|no-idf|no-rescale|bert_score:0.3.13|transformers:5.23.0``.

    (bert_score's own ``get_hash`` reports ``bert_score.__version__``, which is "0.3.12"
    in the 0.3.13 release, so the installed distribution's version is used instead.)
    """
    from importlib.metadata import version
    return (f"{model_type_or_path}|L{num_layers}|no-idf|no-rescale|bert_score:{version('bert_score')}"
            f"|transformers:{version('transformers')}")
