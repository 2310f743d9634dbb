"""What the report says first, in words: did distillation pay off, and can the numbers be trusted.

* **distillation**: the distilled student against the CE-only student (``training.baseline``), per
  metric, from the paired bootstrap: "beats" / "is worse than" when the interval of the difference
  excludes 0, else "no significant difference".
* **warnings**: a model whose outputs collapse (far fewer distinct predictions than the references
  have) or that scores below a trivial system (``copy_source``, ``delete_toxic_words``) on a headline
  metric. When the reference of a comparison is flagged, its retention % measures nothing worth
  keeping, and the comparison says so instead of presenting it.
"""
from __future__ import annotations

from collections import Counter

HEADLINE = ("chrf", "sacrebleu", "rougeL", "bertscore_f1")  # the metrics a reader decides on
TRIVIAL = {"copy_source": "the input returned unchanged",
           "delete_toxic_words": "the input minus a toxic-word list learned from the training split"}
COLLAPSE_RATIO = 0.5  # fewer than half as many distinct outputs as the references have: collapsed
BASELINE = "student_ce"


def diversity(preds: list[str]) -> dict:
    """Fraction of distinct predictions and the most frequent one with its share."""
    if not preds:
        return {"distinct_fraction": None, "most_frequent": None, "most_frequent_fraction": None}
    text, count = Counter(preds).most_common(1)[0]
    return {"distinct_fraction": round(len(set(preds)) / len(preds), 4), "most_frequent": text,
            "most_frequent_fraction": round(count / len(preds), 4)}


def verdict(results: dict, lower_is_better: tuple = ()) -> dict:
    """{'distillation': per-metric outcome of student vs student_ce (or None), 'warnings': [...],
    'flagged': {model: [reasons]}}; also marks each comparison whose reference is flagged."""
    records = {r["name"]: r for r in results["models"]}
    flagged = {name: _problems(r, records, results["references_distinct_fraction"])
               for name, r in records.items() if name not in TRIVIAL and name != "untrained_student"}
    flagged = {k: v for k, v in flagged.items() if v}
    warnings = [f"{name} {reason}" for name, reasons in flagged.items() for reason in reasons]
    for comp in results["comparison"].values():
        if comp["reference"] in flagged:
            comp["retention_caveat"] = (f"{comp['reference']} {' and '.join(flagged[comp['reference']])}: "
                                        f"retention relative to it says nothing about quality")
    comp = results["comparison"].get(f"student vs {BASELINE}")
    return {"distillation": _distillation(comp, lower_is_better) if comp and comp.get("paired") else None,
            "warnings": warnings, "flagged": flagged}


def _problems(record: dict, records: dict, refs_distinct: float) -> list[str]:
    out = []
    distinct = record.get("distinct_fraction")
    if distinct is not None and distinct < COLLAPSE_RATIO * refs_distinct:
        out.append(f"has collapsed: only {100 * distinct:.1f}% of its outputs are distinct (references: "
                   f"{100 * refs_distinct:.1f}%); {100 * record['most_frequent_fraction']:.1f}% are "
                   f"\"{_short(record['most_frequent'])}\"")
    for name, what in TRIVIAL.items():
        if name not in records:
            continue
        below = [f"{k} {record['metrics'][k]:.2f} vs {records[name]['metrics'][k]:.2f}" for k in HEADLINE
                 if k in record["metrics"] and k in records[name]["metrics"]
                 and record["metrics"][k] < records[name]["metrics"][k]]
        if below:
            out.append(f"scores below {name} ({what}) on {', '.join(below)}")
    return out


def _distillation(comp: dict, lower_is_better: tuple) -> dict:
    metrics = {}
    for k, d in comp["paired"].items():
        diff, low, high = d["difference"], d["low"], d["high"]
        better = (diff > 0) != (k in lower_is_better)
        if low > 0 or high < 0:
            outcome = "beats" if better else "is worse than"
            words = f"{outcome} the CE-only student on {k} by {diff:+.2f} [{low:+.2f}, {high:+.2f}]"
        else:
            outcome = "no significant difference"
            words = f"no significant difference from the CE-only student on {k} ({diff:+.2f} [{low:+.2f}, {high:+.2f}])"
        if k in lower_is_better:
            words += " (lower is better)"
        metrics[k] = {"outcome": outcome, "words": words, "difference": diff, "low": low, "high": high}
    return {"model": comp["model"], "reference": comp["reference"], "metrics": metrics}


def headline_lines(results: dict, conf: int) -> list[str]:
    """The report's first section: the distillation verdict and every warning, in words."""
    v = results.get("verdict") or {}
    out = []
    dist = v.get("distillation")
    if dist:
        shown = [k for k in dist["metrics"] if k in HEADLINE or not k.startswith(("rouge", "bleu"))]
        counts = Counter(dist["metrics"][k]["outcome"] for k in shown)
        out += [f"Did distillation pay off? The distilled student against the CE-only student (same init, data, "
                f"steps, seed and decoding), paired difference with its {conf}% interval: it beats it on "
                f"{counts['beats']}, is worse on {counts['is worse than']}, no significant difference on "
                f"{counts['no significant difference']} of {len(shown)} metrics"]
        out += [f"  student {dist['metrics'][k]['words']}" if dist["metrics"][k]["outcome"] != "no significant difference"
                else f"  student: {dist['metrics'][k]['words']}" for k in shown]
    if v.get("warnings"):
        out += ["WARNING: these results flatter; do not read the scores below as success:"]
        out += [f"  - {w}" for w in v["warnings"]]
    return out + [""] if out else []


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."
