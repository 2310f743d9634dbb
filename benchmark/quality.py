"""Quality of one model's predictions: reference-based and model-based metrics, and intervals."""
from __future__ import annotations

from settings import TEXT_METRICS, BenchmarkConfig
from metrics import (
    bertscore,
    bootstrap_ci,
    compute_metrics,
    content_preservation,
    fluency_perplexity,
    paired_bootstrap,
    style_accuracy,
)

LOWER_IS_BETTER = ("fluency_perplexity",)  # left out of retention %, which assumes higher is better


def text_groups(cfg: BenchmarkConfig) -> list[str]:
    return [m for m in cfg.metrics if m in TEXT_METRICS]


def model_metric_outcomes(cfg: BenchmarkConfig, sources, preds, references, device) -> list:
    """MetricResult or MetricSkipped (with a one-line reason) for each configured model-based metric."""
    dev = str(device)
    calls = {
        "bertscore": lambda: bertscore(preds, references, cfg.bertscore_model, cfg.bertscore_layers, device=dev),
        "style_accuracy": lambda: style_accuracy(preds, cfg.style_classifier, toxic_label=cfg.toxic_label,
                                                 device=dev),
        "fluency_perplexity": lambda: fluency_perplexity(preds, cfg.fluency_model, device=dev),
        "content_preservation": lambda: content_preservation(sources, preds, cfg.bertscore_model,
                                                             cfg.bertscore_layers, device=dev),
    }
    return [calls[m]() for m in cfg.metrics if m in calls]


def score(cfg: BenchmarkConfig, examples, preds, device) -> tuple[dict, dict, list[str]]:
    """(scores, per-example scores of the model-based metrics, notes) for one model."""
    refs = [e.references for e in examples]
    groups = text_groups(cfg)
    per_example, notes = {}, []
    scores = compute_metrics(preds, refs, groups, notes=notes) if groups else {}  # notes: sacrebleu's warnings
    for outcome in model_metric_outcomes(cfg, [e.source for e in examples], preds, refs, device):
        scores.update(outcome.scores)
        per_example.update(outcome.per_example)
        notes += list(outcome.notes)
    return {k: round(v, 4) for k, v in scores.items()}, per_example, notes


def intervals(cfg: BenchmarkConfig, examples, preds, per_example) -> dict:
    """Bootstrap interval of every metric (empty when bootstrap_samples is 0)."""
    if not cfg.bootstrap_samples:
        return {}
    ci = bootstrap_ci(preds, [e.references for e in examples], text_groups(cfg), cfg.bootstrap_samples,
                      cfg.confidence, seed=0, per_example=per_example)
    return {k: (round(lo, 4), round(hi, 4)) for k, (lo, hi) in ci.items()}


def paired(cfg: BenchmarkConfig, examples, a: tuple, b: tuple) -> dict:
    """Paired bootstrap of model A against model B; ``a``/``b`` are (predictions, per-example)."""
    if not cfg.bootstrap_samples:
        return {}
    common = set(a[1]) & set(b[1])  # a metric skipped for one model cannot be paired
    out = paired_bootstrap(a[0], b[0], [e.references for e in examples], text_groups(cfg), cfg.bootstrap_samples,
                           cfg.confidence, seed=0, per_example_a={k: a[1][k] for k in common},
                           per_example_b={k: b[1][k] for k in common})
    return {k: {n: round(v, 4) for n, v in d.items()} for k, d in out.items()}
