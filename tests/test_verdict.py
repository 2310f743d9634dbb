"""The report that cannot flatter: collapse and below-trivial warnings, the distillation verdict in
words, and the learned toxic-word deletion baseline."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmark.baselines import delete_words, learn_toxic_words
from benchmark.report import render_text
from benchmark.verdict import diversity, verdict


def _ex(source, *refs):
    return SimpleNamespace(source=source, references=list(refs))


def test_toxic_words_are_the_words_the_references_drop():
    train = [_ex("you are a stupid idiot", "you are wrong"), _ex("what a stupid plan", "what a bad plan"),
             _ex("stupid idiot driver", "the driver"), _ex("that idiot again", "that man again"),
             _ex("you are stupid", "you are wrong"), _ex("you are an idiot", "you are mistaken"),
             _ex("damn you", "you")]  # 'damn' is seen once: no evidence
    words = learn_toxic_words(train)
    assert words == {"stupid", "idiot"}  # 'you', 'are' are kept by the references; 'damn' too rare
    assert delete_words("You STUPID idiot, stop!", words) == "You , stop!"
    assert delete_words("idiot", words) == ""
    assert delete_words("an idiotic idea", words) == "an idiotic idea"  # whole words only


def test_a_word_the_references_sometimes_keep_is_not_deleted():
    train = [_ex("a crap day", "a bad day")] * 9 + [_ex("crap happens", "crap happens")]
    assert learn_toxic_words(train) == {"crap"}  # dropped 9 of 10 times: 0.9
    train.append(_ex("crap again", "crap again"))
    assert learn_toxic_words(train) == set()  # 9 of 11


def test_diversity():
    d = diversity(["a", "b", "a", "a"])
    assert d == {"distinct_fraction": 0.5, "most_frequent": "a", "most_frequent_fraction": 0.75}


def _record(name, chrf, distinct=1.0, top="x", share=0.01):
    return {"name": name, "metrics": {"chrf": chrf, "sacrebleu": chrf - 10, "fluency_perplexity": 50.0},
            "ci": {}, "distinct_fraction": distinct, "most_frequent": top, "most_frequent_fraction": share}


def _results(models, comparison):
    return {"models": models, "comparison": comparison, "references_distinct_fraction": 1.0, "num_examples": 500,
            "split": "test", "decoding": {}, "confidence": 0.95, "notes": [], "sacrebleu_signatures": {},
            "environment": {"device": "cpu", "precision": "fp32", "torch": "t", "transformers": "t"}}


def _comp(model, ref, paired):
    return {"model": model, "reference": ref, "compression_ratio": 4.0, "size_ratio": 4.0, "speedup": 2.0,
            "retention_pct": {"chrf": 102.2, "sacrebleu": 100.0}, "paired": paired}


def test_a_collapsed_teacher_below_copying_is_named_and_its_retention_is_not_success():
    """The issue's case: every output is one sentence, chrF 8.9 where copying scores 76.6, 'retention 102%'."""
    models = [_record("teacher", 8.9, distinct=0.002, top="I don't care about it.", share=1.0),
              _record("student", 9.1, distinct=0.002, top="I don't care about it.", share=1.0),
              _record("copy_source", 76.6), _record("delete_toxic_words", 79.9)]
    results = _results(models, {"student vs teacher": _comp("student", "teacher", {})})
    results["verdict"] = verdict(results, ("fluency_perplexity",))
    flagged = results["verdict"]["flagged"]
    assert set(flagged) == {"teacher", "student"}  # the trivial rows are never flagged
    assert any("collapsed" in r and "I don't care about it." in r and "100.0% are" in r for r in flagged["teacher"])
    assert any(r.startswith("scores below copy_source") and "chrf 8.90 vs 76.60" in r for r in flagged["teacher"])
    assert any(r.startswith("scores below delete_toxic_words") for r in flagged["teacher"])
    text = render_text(results)
    top = text.split("Quality (")[0]
    assert "WARNING" in top and "teacher has collapsed" in top and "teacher scores below copy_source" in top
    assert "NOT A SUCCESS MEASURE HERE: teacher has collapsed" in text


def test_a_sound_teacher_gets_no_warning():
    models = [_record("teacher", 85.0), _record("student", 80.0), _record("copy_source", 76.6)]
    results = _results(models, {"student vs teacher": _comp("student", "teacher", {})})
    results["verdict"] = verdict(results)
    assert results["verdict"]["warnings"] == [] and results["verdict"]["distillation"] is None
    assert "WARNING" not in render_text(results) and "retention_caveat" not in results["comparison"]["student vs teacher"]


@pytest.mark.parametrize("diff,low,high,outcome,words", [
    (2.1, 1.2, 3.0, "beats", "beats the CE-only student on chrf by +2.10 [+1.20, +3.00]"),
    (-1.5, -2.5, -0.4, "is worse than", "is worse than the CE-only student on chrf by -1.50 [-2.50, -0.40]"),
    (0.3, -0.5, 1.1, "no significant difference",
     "no significant difference from the CE-only student on chrf (+0.30 [-0.50, +1.10])"),
])
def test_distillation_verdict_in_words(diff, low, high, outcome, words):
    paired = {"chrf": {"difference": diff, "low": low, "high": high, "p_value": 0.01},
              "fluency_perplexity": {"difference": -5.0, "low": -8.0, "high": -2.0, "p_value": 0.0}}
    models = [_record("teacher", 85.0), _record("student", 80.0), _record("student_ce", 78.0)]
    results = _results(models, {"student vs student_ce": _comp("student", "student_ce", paired)})
    results["verdict"] = v = verdict(results, ("fluency_perplexity",))
    m = v["distillation"]["metrics"]
    assert m["chrf"]["outcome"] == outcome and m["chrf"]["words"] == words
    assert m["fluency_perplexity"]["outcome"] == "beats"  # lower perplexity is better
    top = render_text(results).split("Quality (")[0]
    assert words in top and "Did distillation pay off?" in top
