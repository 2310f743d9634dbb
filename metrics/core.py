"""Reference-based text metrics: ROUGE, BLEU (nltk), sacreBLEU and chrF (``metrics.core``).

Every score is computed by its reference library (``rouge_score``, ``nltk``,
``sacrebleu``); nothing here re-implements ROUGE or BLEU. This module only
validates the inputs, feeds each library the representation it expects and puts
every score on the same **0-100 scale** (ROUGE and nltk BLEU are multiplied by 100;
sacreBLEU and chrF already are 0-100).

Each example has one or more references (``references[i]`` is a list). Empty or
whitespace-only references (and ``None``) are dropped; every example must keep at
least one. Empty predictions are allowed and simply score 0 where nothing matches.

Tokenization, per metric:

* ROUGE: ``rouge_score``'s own tokenizer (lowercase, every run of characters
  outside ``[a-z0-9]`` is a separator, Porter stemming with ``use_stemmer=True``).
  Note that it therefore drops non-ASCII letters ("café" -> "caf", CJK -> nothing).
  rougeLsum is summary-level LCS over sentences, which ``rouge_score`` finds by
  splitting on "\\n"; we put one sentence per line with :func:`split_sentences`
  (a regex splitter, so no nltk punkt data is needed).
* BLEU (``bleu1``..``bleu4``): nltk's ``corpus_bleu`` on tokens from
  :func:`bleu_tokenize`: lowercase, then each maximal run of word characters
  (``\\w+``, Unicode-aware: letters, digits, underscore) is a token and every
  other non-space character is a token by itself ("don't." -> don ' t .).
  ``bleuN`` uses uniform cumulative weights over 1..N-grams and smoothing
  ``method1`` (zero n-gram counts become epsilon=0.1). Consequence: a prediction
  with fewer than N tokens cannot reach 100 on ``bleuN`` even if it equals the
  reference, because its missing N-grams are smoothed, not skipped.
* sacreBLEU / chrF: ``sacrebleu.metrics.BLEU`` / ``CHRF`` with their defaults
  (13a tokenizer, case-sensitive, exp smoothing; chrF2 with char order 6). Their
  signature strings (:func:`sacrebleu_signatures`) make the numbers reproducible.
  sacrebleu's own warnings (e.g. "forgot to detokenize", for 100+ outputs ending in " .")
  are captured (:func:`sacrebleu_warnings`) and become one note (``notes`` of
  :func:`compute_metrics`), not three log lines per call.
"""
from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Optional

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

METRIC_GROUPS = ("rouge", "bleu", "sacrebleu", "chrf")

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
BLEU_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4")
# bleuN: uniform weights over 1..N-grams (cumulative BLEU-N).
_BLEU_WEIGHTS = [tuple([1.0 / n] * n) for n in range(1, 5)]
_SMOOTHING = SmoothingFunction().method1

_ROUGE = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
# Corpus-level sacrebleu metrics. They are stateful only in one respect: scoring
# records the number of references, which their signature reports.
_SACREBLEU = BLEU()
_CHRF = CHRF()
# Sentence-level BLEU needs effective order (as sacrebleu.sentence_bleu uses), else
# every short sentence without a 4-gram match scores near 0.
_SENTENCE_SACREBLEU = BLEU(effective_order=True)
_SENTENCE_CHRF = CHRF()


# --------------------------------------------------------------------------- tokenizing
_BLEU_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def bleu_tokenize(text: str) -> list[str]:
    """Tokens for nltk BLEU: lowercased words (``\\w+``) and single punctuation marks."""
    return _BLEU_TOKEN_RE.findall(text.lower())


# A sentence ends at . ! or ? (possibly repeated, possibly followed by closing quotes
# or brackets) when whitespace and then an uppercase letter or digit follow, with
# optional opening quotes/brackets in between. Group 1 is that first letter/digit.
_BOUNDARY_RE = re.compile(r"""[.!?]+["'”’)\]]*(?=\s+["'“‘(\[]*(\w))""")
# A word ending right before a "." that is an initial or a dotted acronym: J, U.S, e.g
_DOTTED_RE = re.compile(r"(?:^|[\s(\[\"'“‘])(?:[A-Za-z]\.)*[A-Za-z]$")
# Abbreviations usually followed by a name or a number, not a sentence end.
_ABBREVIATIONS = frozenset(
    "Mr Mrs Ms Dr Prof Sr Jr St Mt Gen Gov Sen Rep Col Lt Capt Sgt No Fig vs "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec".split())


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences with a regex; needs no nltk punkt data.

    Every line is split separately (a newline always ends a sentence). Inside a line
    a boundary is ``.``, ``!`` or ``?`` followed by whitespace and an uppercase letter
    or digit (optionally after an opening quote or bracket). A single ``.`` after an
    initial or dotted acronym ("J.", "U.S.", "e.g.") or after a title such as "Mr."
    or "Dr." is not a boundary, so "U.S. The" stays together: a trade-off that
    favours keeping abbreviations intact. Empty sentences are dropped.
    """
    sentences = []
    for line in text.splitlines():
        start = 0
        for m in _BOUNDARY_RE.finditer(line):
            if _is_boundary(line, m):
                sentences.append(line[start:m.end()].strip())
                start = m.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def _is_boundary(line: str, m: re.Match) -> bool:
    """Whether the candidate ``m`` ends a sentence: next word capitalised or a number,
    and a lone "." does not close an abbreviation."""
    nxt = m.group(1)
    if not (nxt.isupper() or nxt.isdigit()):
        return False
    if not m.group().startswith(".") or m.group().startswith(".."):
        return True  # ! ? and ellipses always end a sentence
    before = line[:m.start()]
    words = before.split()
    word = words[-1].lstrip("\"'“‘([") if words else ""
    return not (_DOTTED_RE.search(before) or word in _ABBREVIATIONS)


def _one_sentence_per_line(text: str) -> str:
    """The layout rouge_score expects for rougeLsum: sentences joined by newlines."""
    return "\n".join(split_sentences(text))


# --------------------------------------------------------------------------- inputs
def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    """Validate the inputs; return each example's non-empty references."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    cleaned = []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise TypeError(f"prediction {i} is a {type(pred).__name__}, not a str")
        if isinstance(refs, str) or not isinstance(refs, Iterable):
            raise TypeError(f"references[{i}] must be a list of reference strings, "
                            f"got {type(refs).__name__}")
        kept = [r for r in refs if r is not None and r.strip()]
        if not kept:
            raise ValueError(f"example {i} has no non-empty reference")
        cleaned.append(kept)
    return cleaned


def _check_groups(groups: Iterable[str] | str) -> tuple[str, ...]:
    groups = (groups,) if isinstance(groups, str) else tuple(groups)
    unknown = [g for g in groups if g not in METRIC_GROUPS]
    if unknown:
        raise ValueError(f"unknown metric group(s) {unknown}; choose from {list(METRIC_GROUPS)}")
    return groups


def by_group(groups: Iterable[str] | str, compute: dict[str, Callable[[], dict]]) -> dict:
    """The one dispatch over metric groups: ``compute[g]()`` for each requested group, in
    :data:`METRIC_GROUPS` order, merged into one dict of metric keys."""
    groups = _check_groups(groups)
    out: dict = {}
    for g in METRIC_GROUPS:
        if g in groups:
            out.update(compute[g]())
    return out


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[Optional[str]]]:
    """Transpose per-example reference lists into sacrebleu's reference streams.

    Stream j holds every example's j-th reference. Examples with fewer references are
    padded with ``None``: sacrebleu 2.6 (``Metric._cache_references``) drops ``None``
    entries and reports ``nrefs:var`` in the signature. An empty string is *not*
    dropped, despite its docstring: it counts as a real zero-length reference, which
    for BLEU can become the "closest reference length" and switch off the brevity
    penalty. Hence ``None``, never "".
    """
    k = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(k)]


# --------------------------------------------------------------------------- per metric
def _rouge_per_example(predictions: Sequence[str], references: list[list[str]]) -> dict[str, list[float]]:
    """ROUGE F-measure x 100 of every example against its best reference.

    ``score_multi`` keeps, separately for each ROUGE type, the reference with the
    highest F-measure. Texts are laid out one sentence per line (for rougeLsum);
    the other types ignore line breaks.
    """
    out = {k: [] for k in ROUGE_TYPES}
    for pred, refs in zip(predictions, references):
        scores = _ROUGE.score_multi([_one_sentence_per_line(r) for r in refs], _one_sentence_per_line(pred))
        for k in ROUGE_TYPES:
            out[k].append(100.0 * scores[k].fmeasure)
    return out


def _nltk_bleu_corpus(predictions: Sequence[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (nltk, method1 smoothing, all references) x 100."""
    scores = corpus_bleu([[bleu_tokenize(r) for r in refs] for refs in references],
                         [bleu_tokenize(p) for p in predictions],
                         weights=_BLEU_WEIGHTS, smoothing_function=_SMOOTHING)
    return {k: 100.0 * float(s) for k, s in zip(BLEU_KEYS, scores)}


def _nltk_bleu_sentence(prediction: str, references: list[str]) -> dict[str, float]:
    """Sentence BLEU-1..4 of one example (same tokenizer and smoothing) x 100."""
    scores = sentence_bleu([bleu_tokenize(r) for r in references], bleu_tokenize(prediction),
                           weights=_BLEU_WEIGHTS, smoothing_function=_SMOOTHING)
    return {k: 100.0 * float(s) for k, s in zip(BLEU_KEYS, scores)}


# --------------------------------------------------------------------------- public API
def compute_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                    groups: Iterable[str] | str = METRIC_GROUPS, notes: list[str] | None = None) -> dict[str, float]:
    """Corpus-level scores (0-100) of ``predictions`` against their references.

    ``groups`` picks the metrics: "rouge" -> rouge1, rouge2, rougeL, rougeLsum (mean
    over examples of the best-reference F-measure); "bleu" -> bleu1..bleu4 (nltk corpus
    BLEU); "sacrebleu" -> sacrebleu (corpus BLEU); "chrf" -> chrf (corpus chrF).
    sacrebleu's warnings become a note appended to ``notes``; without that list, one
    warning in the ``kd`` log per distinct note and process.
    """
    refs = _check_inputs(predictions, references)
    streams = reference_streams(refs)
    with sacrebleu_warnings() as warned:
        scores = by_group(groups, {
            "rouge": lambda: {k: sum(v) / len(v) for k, v in _rouge_per_example(predictions, refs).items()},
            "bleu": lambda: _nltk_bleu_corpus(predictions, refs),
            "sacrebleu": lambda: {"sacrebleu": float(_SACREBLEU.corpus_score(list(predictions), streams).score)},
            "chrf": lambda: {"chrf": float(_CHRF.corpus_score(list(predictions), streams).score)},
        })
    if warned:
        _give_note(sacrebleu_note(warned), notes)
    return scores


@contextmanager
def sacrebleu_warnings():
    """Collect the messages sacrebleu logs inside the block instead of letting them reach stderr (it
    repeats its "forgot to detokenize" warning, three lines, at every corpus score)."""
    logger, messages = logging.getLogger("sacrebleu"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def sacrebleu_note(messages: Sequence[str]) -> str:
    """One line for a report from what sacrebleu warned; the same text for every model, so said once."""
    said = "; ".join(m.rstrip(".") for m in dict.fromkeys(messages) if "`force`" not in m)  # (its API's opt-out)
    if "detokenize" in said:
        return (f"sacreBLEU: the outputs look tokenized (sacrebleu warned: {said}); scores may not be comparable "
                f"with published ones")
    return f"sacreBLEU: sacrebleu warned: {said}"


_LOGGED_NOTES: set[str] = set()


def _give_note(note: str, notes: list[str] | None) -> None:
    """Append ``note`` to the caller's ``notes``, or without one log it (once per process)."""
    if notes is not None:
        if note not in notes:
            notes.append(note)
    elif note not in _LOGGED_NOTES:
        _LOGGED_NOTES.add(note)
        from utils.logs import log
        log.warning("%s", note)


def per_example_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                       groups: Iterable[str] | str = METRIC_GROUPS) -> dict[str, list[float]]:
    """Sentence-level scores (0-100), one list per metric key, for bootstrap CIs.

    ROUGE lists average exactly to :func:`compute_metrics`'s ROUGE. BLEU, sacreBLEU
    and chrF are *not* averages: corpus BLEU/chrF pool n-gram counts and lengths over
    the corpus before dividing, so the mean of sentence scores differs (usually
    it is lower for BLEU). Resample these lists to get a spread, not to recompute
    the corpus score. Sentence BLEU is nltk ``sentence_bleu`` (same tokenizer and
    smoothing as corpus BLEU) and sacrebleu's with effective order, as its
    ``sentence_bleu`` does.
    """
    refs = _check_inputs(predictions, references)

    def bleu():
        rows = [_nltk_bleu_sentence(p, r) for p, r in zip(predictions, refs)]
        return {k: [row[k] for row in rows] for k in BLEU_KEYS}
    return by_group(groups, {
        "rouge": lambda: _rouge_per_example(predictions, refs),
        "bleu": bleu,
        "sacrebleu": lambda: {"sacrebleu": [float(_SENTENCE_SACREBLEU.sentence_score(p, r).score)
                                            for p, r in zip(predictions, refs)]},
        "chrf": lambda: {"chrf": [float(_SENTENCE_CHRF.sentence_score(p, r).score) for p, r in zip(predictions, refs)]},
    })


def sacrebleu_signatures() -> dict[str, str]:
    """Signatures of the corpus BLEU and chrF metrics, e.g. for a report.

    The ``nrefs`` field is the number of references seen by the most recent
    :func:`compute_metrics` call ("var" when it varied per example); before any
    call it is unknown and shown as "?".
    """
    return {"sacrebleu": _signature(_SACREBLEU), "chrf": _signature(_CHRF)}


def _signature(metric) -> str:
    if not hasattr(metric, "num_refs"):  # sacrebleu refuses to sign an unused metric
        metric = copy.copy(metric)
        metric.num_refs = "?"
    return str(metric.get_signature())
