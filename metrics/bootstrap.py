"""Bootstrap confidence intervals and the paired bootstrap test for the corpus metrics.

Resampling: a resample draws ``n`` of the ``n`` examples with replacement
(``numpy.random.default_rng(seed)``); every metric is then recomputed **as a corpus
metric** on that resample. Corpus BLEU, sacreBLEU and chrF pool n-gram counts and
lengths over the corpus before dividing, so they are recomputed from pooled counts,
never averaged from sentence scores. The interval is the percentile interval: the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled
scores (numpy's linear interpolation).

Speed: each metric is reduced to per-example **sufficient statistics**, an
``(n, d)`` array whose column sums determine the corpus score
(:class:`SufficientStats`). A resample is a vector ``c`` of draw counts (how often
each example was drawn), its statistics are ``c @ rows``, so no text is re-tokenized:

* ``rouge*`` (and any per-example metric passed as ``per_example``): ``[score, 1]``;
  the corpus value is the mean, ``sum(score) / count``.
* ``bleu1``..``bleu4`` (nltk): per example the clipped n-gram matches and n-gram counts
  for n = 1..4 (``nltk.translate.bleu_score.modified_precision``), the hypothesis
  length and the closest reference length (``closest_ref_length``); recombined exactly
  as ``corpus_bleu`` does (``brevity_penalty``, method1 smoothing, uniform weights).
* ``sacrebleu`` / ``chrf``: sacrebleu's own segment statistics and score function,
  ``Metric._extract_corpus_statistics`` and ``Metric._compute_score_from_stats``: the
  (underscored) API that sacrebleu's ``significance`` module uses for its bootstrap.

On the full set every recombined score equals :func:`metrics.compute_metrics` (tested).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Optional

import numpy as np
from nltk.translate.bleu_score import Fraction, brevity_penalty, closest_ref_length, modified_precision

from metrics.core import (_BLEU_WEIGHTS, _CHRF, _SACREBLEU, _SMOOTHING, BLEU_KEYS, METRIC_GROUPS, by_group,
                          _check_inputs, _rouge_per_example, bleu_tokenize, reference_streams,
                          sacrebleu_warnings)

_CHUNK = 128  # resamples whose draw counts are held in memory at once: (_CHUNK, n) floats


@dataclass(frozen=True)
class SufficientStats:
    """Per-example statistics of one metric: ``score(rows.sum(0))`` is its corpus value."""
    rows: np.ndarray                      # (n_examples, d)
    score: Callable[[np.ndarray], float]  # column sums (d,) -> corpus score

    def corpus(self) -> float:
        """The metric on the full set."""
        return self.score(self.rows.sum(axis=0))


# --------------------------------------------------------------------------- statistics
def mean_statistics(values: Sequence[Optional[float]]) -> SufficientStats:
    """Rows ``[value, 1]`` (``[0, 0]`` for ``None``: not counted); score = sum / count."""
    rows = np.array([[0.0, 0.0] if v is None else [float(v), 1.0] for v in values]).reshape(-1, 2)
    return SufficientStats(rows, _mean_from_sums)


def _mean_from_sums(s: np.ndarray) -> float:
    return float(s[0] / s[1]) if s[1] else math.nan


def _nltk_bleu_rows(predictions: Sequence[str], references: list[list[str]]) -> np.ndarray:
    """Per example: matches_1..4, ngrams_1..4 (what corpus_bleu sums), hyp length, closest ref length."""
    rows = []
    for pred, refs in zip(predictions, references):
        hyp, toks = bleu_tokenize(pred), [bleu_tokenize(r) for r in refs]
        p = [modified_precision(toks, hyp, n) for n in range(1, 5)]
        rows.append([x.numerator for x in p] + [x.denominator for x in p]
                    + [len(hyp), closest_ref_length(toks, len(hyp))])
    return np.array(rows, dtype=float)


def _nltk_bleu_from_sums(s: np.ndarray, weights: tuple[float, ...]) -> float:
    """x 100 of nltk ``corpus_bleu`` from summed statistics: its final steps, in its order.

    BLEU = BP * exp(sum_n w_n log p_n), p_n = matches_n / ngrams_n (method1: a zero
    count becomes epsilon = 0.1), BP = brevity_penalty(closest ref length, hyp length);
    0 when no unigram matches.
    """
    num, den = [int(round(x)) for x in s[0:4]], [int(round(x)) for x in s[4:8]]
    hyp_len, ref_len = int(round(s[8])), int(round(s[9]))
    if num[0] == 0:
        return 0.0
    bp = brevity_penalty(ref_len, hyp_len)
    p_n = _SMOOTHING([Fraction(a, b, _normalize=False) for a, b in zip(num, den)], hyp_len=hyp_len)
    return 100.0 * float(bp * math.exp(math.fsum(w * math.log(p) for w, p in zip(weights, p_n) if p > 0)))


def _sacrebleu_statistics(metric, predictions: Sequence[str], streams) -> SufficientStats:
    """sacrebleu's segment statistics; a private copy of the metric, so that scoring
    here does not change the ``nrefs`` that :func:`sacrebleu_signatures` reports."""
    metric = copy.copy(metric)
    with sacrebleu_warnings():  # its "forgot to detokenize" warning: compute_metrics already noted it
        rows = np.array(metric._extract_corpus_statistics(list(predictions), streams), dtype=float)
    return SufficientStats(rows, lambda s: float(metric._compute_score_from_stats(s).score))


def metric_statistics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                      groups: Iterable[str] | str = METRIC_GROUPS,
                      per_example: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
                      ) -> dict[str, SufficientStats]:
    """Sufficient statistics of every key :func:`compute_metrics` returns for ``groups``,
    plus one mean metric per ``per_example`` list (``None`` entries are not counted)."""
    refs = _check_inputs(predictions, references)
    streams = reference_streams(refs)

    def bleu():
        rows = _nltk_bleu_rows(predictions, refs)
        return {k: SufficientStats(rows, partial(_nltk_bleu_from_sums, weights=w)) for k, w in zip(BLEU_KEYS, _BLEU_WEIGHTS)}
    out = by_group(groups, {
        "rouge": lambda: {k: mean_statistics(v) for k, v in _rouge_per_example(predictions, refs).items()},
        "bleu": bleu,
        "sacrebleu": lambda: {"sacrebleu": _sacrebleu_statistics(_SACREBLEU, predictions, streams)},
        "chrf": lambda: {"chrf": _sacrebleu_statistics(_CHRF, predictions, streams)},
    })
    for key, values in (per_example or {}).items():
        if len(values) != len(predictions):
            raise ValueError(f"per_example[{key!r}] has {len(values)} values for {len(predictions)} predictions")
        out[key] = mean_statistics(values)
    return out


# --------------------------------------------------------------------------- resampling
def _draw_counts(n: int, n_resamples: int, seed: int):
    """Chunks of draw counts, shape (chunk, n): row r counts how often resample r drew each example."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _CHUNK):
        c = min(_CHUNK, n_resamples - start)
        flat = (rng.integers(0, n, size=(c, n)) + n * np.arange(c)[:, None]).ravel()
        yield np.bincount(flat, minlength=c * n).reshape(c, n).astype(float)


def resampled_scores(systems: list[dict[str, SufficientStats]], n_resamples: int, seed: int
                     ) -> list[dict[str, np.ndarray]]:
    """Every metric of every system on the same ``n_resamples`` resamples (same indices for all)."""
    if not systems[0]:
        return [{} for _ in systems]
    n = len(next(iter(systems[0].values())).rows)
    out = [{k: [] for k in stats} for stats in systems]
    for counts in _draw_counts(n, n_resamples, seed):
        for stats, acc in zip(systems, out):
            sums: dict[int, np.ndarray] = {}  # bleu1..4 share one statistics array
            for key, st in stats.items():
                if id(st.rows) not in sums:
                    sums[id(st.rows)] = counts @ st.rows
                acc[key].extend(st.score(row) for row in sums[id(st.rows)])
    return [{k: np.asarray(v, dtype=float) for k, v in acc.items()} for acc in out]


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The (1-c)/2 and (1+c)/2 quantiles; resamples where the metric is undefined (NaN) are ignored."""
    if np.isnan(samples).all():
        return math.nan, math.nan
    low, high = np.nanpercentile(samples, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def _check_settings(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


# --------------------------------------------------------------------------- public API
def bootstrap_ci(predictions: Sequence[str], references: Sequence[Sequence[str]],
                 groups: Iterable[str] | str = METRIC_GROUPS, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0,
                 per_example: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
                 ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval ``(low, high)`` of every metric key, 0-100.

    Keys: those of ``compute_metrics(predictions, references, groups)`` plus the keys of
    ``per_example`` (extra metrics whose corpus value is the mean of per-example scores,
    e.g. ``bertscore(...).per_example``; ``None`` = not counted). Same seed, same intervals.
    """
    _check_settings(n_resamples, confidence)
    stats = metric_statistics(predictions, references, groups, per_example)
    (samples,) = resampled_scores([stats], n_resamples, seed)
    return {k: _percentile_interval(v, confidence) for k, v in samples.items()}


def paired_bootstrap(preds_a: Sequence[str], preds_b: Sequence[str], references: Sequence[Sequence[str]],
                     groups: Iterable[str] | str = METRIC_GROUPS, n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0,
                     per_example_a: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
                     per_example_b: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
                     ) -> dict[str, dict[str, float]]:
    """Paired bootstrap of system A against system B on the same references.

    Both systems are scored on the **same** resamples. Per metric key:

    * ``difference``: A - B on the full set;
    * ``low``, ``high``: percentile interval of the resampled differences A_r - B_r;
    * ``p_value``: the fraction of resamples in which the sign flips, i.e. in which A_r - B_r
      is <= 0 when the full-set difference is > 0 (>= 0 when it is < 0); 1.0 when the
      difference is 0. This is Koehn's (2004) paired bootstrap: 1 - the fraction of resamples
      the better system wins. It is one-sided (double it for a two-sided test) and is not
      sacrebleu's ``--paired-bs`` p-value, which centres the resampled differences first.
    """
    _check_settings(n_resamples, confidence)
    if len(preds_a) != len(preds_b):
        raise ValueError(f"system A has {len(preds_a)} predictions, system B {len(preds_b)}")
    a = metric_statistics(preds_a, references, groups, per_example_a)
    b = metric_statistics(preds_b, references, groups, per_example_b)
    if set(a) != set(b):
        raise ValueError(f"per_example keys differ: {sorted(set(a) ^ set(b))}")
    sa, sb = resampled_scores([a, b], n_resamples, seed)
    out = {}
    for key in a:
        diff, d = a[key].corpus() - b[key].corpus(), sa[key] - sb[key]
        low, high = _percentile_interval(d, confidence)
        out[key] = {"difference": diff, "low": low, "high": high, "p_value": _sign_flip_rate(d, diff)}
    return out


def _sign_flip_rate(resampled: np.ndarray, full: float) -> float:
    """Fraction of resampled differences that do not share the full-set difference's sign."""
    resampled = resampled[~np.isnan(resampled)]
    if full == 0 or math.isnan(full) or not len(resampled):
        return 1.0
    flips = resampled <= 0 if full > 0 else resampled >= 0
    return float(flips.mean())
