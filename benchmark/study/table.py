"""``study_table.md``: the study's results as markdown, rendered from ``study_results.json`` alone."""
from __future__ import annotations


def _ci(value: float, ci, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    return f"{f.format(value)} [{f.format(ci[0])}, {f.format(ci[1])}]"


def render_table(r: dict) -> str:
    """The markdown table of the study (see :mod:`benchmark.study.aggregate` for what each number is)."""
    metrics, conf = r["metrics"], round(100 * r["confidence"])
    sc = r["style_classifier"]
    seeds = sorted({s for v in r["systems"].values() for s in v["seeds"]})
    lines = [
        f"# Distillation study: {r['study_file']}", "",
        f"Reproduce: `{r['command']}`", "",
        f"Test split: {r['num_test_sources']:,} sources ({r['num_test_references']:,} references); training "
        f"{r['num_train_sources']:,} sources. Students: seeds {', '.join(map(str, seeds))}, the mean over seeds; "
        f"[{conf}% interval] from {r['bootstrap_samples']:,} bootstrap resamples of the test sources, the same "
        f"resamples for every system and seed.", "",
        f"Style score (non-toxic %): the share of outputs that a TF-IDF (word 1-2-grams, char 2-5-grams) + logistic "
        f"regression toxicity classifier, trained on the training split's sources (toxic) against its references "
        f"(neutral), calls non-toxic. Its held-out accuracy on the test split: {sc['accuracy']:.1f}% "
        f"({sc['toxic_recall']:.1f}% of the {sc['n_toxic']:,} sources called toxic, {sc['neutral_recall']:.1f}% of the "
        f"{sc['n_neutral']:,} references called non-toxic). An empty output counts as non-toxic: read the score "
        f"beside BLEU and chrF.", "",
        "| system | " + " | ".join(metrics.values()) + " | retention (chrF) | speedup |",
        "|---" * (len(metrics) + 3) + "|",
    ]
    for name, s in r["systems"].items():
        label = f"{name} ({len(s['seeds'])} seeds)" if len(s["seeds"]) > 1 else name
        if s["kind"] == "teacher" and r["teacher_beats_trivial"]:
            below = [metrics[k] for k, ok in r["teacher_beats_trivial"].items() if not ok]
            label += (f" (does NOT beat both trivial systems on {', '.join(below)})" if below
                      else " (beats both trivial systems)")
        cells = [_ci(s["metrics"][k], s["ci"][k]) for k in metrics]
        ret = f"{s['retention_chrf_pct']:.1f}%" if s["retention_chrf_pct"] is not None else "-"
        speed = f"{s['speedup']:.2f}x" if s["speedup"] is not None else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ret} | {speed} |")
    if r["teacher_vs_trivial"]:
        lines += ["", "## The teacher against the trivial systems", "",
                  f"teacher - system on the full test set [{conf}% paired interval].", "",
                  "| against | " + " | ".join(metrics.values()) + " |", "|---" * (len(metrics) + 1) + "|"]
        for t, d in r["teacher_vs_trivial"].items():
            lines.append(f"| {t} | " + " | ".join(_word(d[k]) for k in metrics) + " |")
        beats = [metrics[k] for k, ok in r["teacher_beats_trivial"].items() if ok]
        not_beats = [metrics[k] for k, ok in r["teacher_beats_trivial"].items() if not ok]
        lines += ["", (f"The teacher beats both trivial systems on {', '.join(beats) or 'no metric'}"
                       + (f"; it does NOT beat both on {', '.join(not_beats)}." if not_beats else "."))]
    if r["vs_ce_only"]:
        lines += ["", "## Against the CE-only student", "",
                  f"Mean over seeds of (method - ce_only), seed s against seed s (same initialisation, data order and "
                  f"steps) [{conf}% paired interval, the test sources resampled jointly for all seeds].", "",
                  "| method | " + " | ".join(metrics.values()) + " |", "|---" * (len(metrics) + 1) + "|"]
        for m, d in r["vs_ce_only"].items():
            lines.append(f"| {m} | " + " | ".join(_word(d[k]) for k in metrics) + " |")
        lines += ["", _summary(r["vs_ce_only"])]
    return "\n".join(lines) + "\n"


def _word(d: dict) -> str:
    return f"{_ci(d['difference'], (d['low'], d['high']), signed=True)} {d['outcome']}"


def _summary(vs_ce: dict) -> str:
    """Which methods helped on chrF, in words."""
    by = {w: [m for m, d in vs_ce.items() if d["chrf"]["outcome"] == w] for w in ("helps", "hurts",
                                                                                "no significant difference")}
    parts = [f"helps: {', '.join(by['helps'])}" if by["helps"] else "no method helps",
             f"hurts: {', '.join(by['hurts'])}" if by["hurts"] else "",
             f"no significant difference: {', '.join(by['no significant difference'])}"
             if by["no significant difference"] else ""]
    return "On chrF against the CE-only student: " + "; ".join(p for p in parts if p) + "."
