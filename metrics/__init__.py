"""Quality metrics of generated text, all on a 0-100 scale (perplexity excepted).

Modules:

* :mod:`metrics.core`: reference-based corpus metrics via their libraries: ROUGE
  (``rouge_score``), BLEU-1..4 (``nltk``), sacreBLEU and chrF (``sacrebleu``):
  :func:`compute_metrics`, :func:`per_example_scores`, :func:`sacrebleu_signatures`.
* :mod:`metrics.bootstrap`: percentile bootstrap intervals that recompute each corpus
  metric on every resample (:func:`bootstrap_ci`) and the paired bootstrap test of two
  systems on the same resamples (:func:`paired_bootstrap`).
* :mod:`metrics.bertscore`: BERTScore via ``bert_score`` (:func:`bertscore`).
* :mod:`metrics.detox`: detoxification metrics: :func:`style_accuracy` (toxicity
  classifier), :func:`fluency_perplexity` (causal LM), :func:`content_preservation`
  (BERTScore F1 against the source).
* :mod:`metrics.results`: what the model-based metrics return: :class:`MetricResult`,
  or :class:`MetricSkipped` with a one-line reason when the model cannot be loaded
  (offline hub name, broken directory); they never crash or wait on the hub for that.

Heavy libraries (``bert_score``, model weights) are imported or loaded only when a
model-based metric is called.
"""
from metrics.bertscore import BERTSCORE_KEYS, bertscore
from metrics.bootstrap import bootstrap_ci, metric_statistics, paired_bootstrap
from metrics.core import (BLEU_KEYS, METRIC_GROUPS, ROUGE_TYPES, bleu_tokenize, compute_metrics, per_example_scores,
                          reference_streams, sacrebleu_signatures, split_sentences)
from metrics.detox import content_preservation, fluency_perplexity, style_accuracy
from metrics.results import MetricOutcome, MetricResult, MetricSkipped, clear_model_cache

__all__ = [
    "BERTSCORE_KEYS", "BLEU_KEYS", "METRIC_GROUPS", "ROUGE_TYPES", "MetricOutcome", "MetricResult", "MetricSkipped",
    "bertscore", "bleu_tokenize", "bootstrap_ci", "clear_model_cache", "compute_metrics", "content_preservation",
    "fluency_perplexity", "metric_statistics", "paired_bootstrap", "per_example_scores", "reference_streams",
    "sacrebleu_signatures", "split_sentences", "style_accuracy",
]
