"""Tests for metrics.py: every value is checked against the libraries called directly."""
import math
import sys
from pathlib import Path

import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics  # noqa: E402
from metrics import (METRIC_GROUPS, compute_metrics, per_example_scores,  # noqa: E402
                     sacrebleu_signatures, split_sentences)

PREDS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the stage tonight.",
    "Scientists discovered a new species of frog in Brazil.",
]
REFS_A = [
    "The quick brown fox jumped over the lazy dogs.",
    "A man plays the guitar on stage.",
    "Researchers found a new frog species in the Amazon.",
]
REFS_B = [
    "A fast brown fox leaps over a lazy dog.",
    "Tonight a man is playing guitar on the stage.",
    "A new species of frog was discovered by scientists in Brazil.",
]
W = [(1.0,), (0.5, 0.5), (1 / 3,) * 3, (0.25,) * 4]
SMOOTH = SmoothingFunction().method1


def rouge_direct(refs, pred):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    return scorer.score_multi(refs, pred)


def test_package_keeps_the_public_api():
    # metrics.py became the package metrics/; callers keep importing from ``metrics``.
    for name in ("compute_metrics", "per_example_scores", "split_sentences", "sacrebleu_signatures",
                 "bleu_tokenize", "reference_streams", "METRIC_GROUPS"):
        assert getattr(metrics, name) is getattr(metrics.core, name), name
    for name in ("bootstrap_ci", "paired_bootstrap", "bertscore", "style_accuracy", "fluency_perplexity",
                 "content_preservation", "MetricResult", "MetricSkipped"):
        assert name in metrics.__all__, name


def test_metric_groups_and_keys():
    assert METRIC_GROUPS == ("rouge", "bleu", "sacrebleu", "chrf")
    out = compute_metrics(PREDS, [[a] for a in REFS_A])
    assert set(out) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu2", "bleu3", "bleu4",
                        "sacrebleu", "chrf"}
    assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in out.values())
    assert set(compute_metrics(PREDS, [[a] for a in REFS_A], groups=("chrf",))) == {"chrf"}
    assert set(compute_metrics(PREDS, [[a] for a in REFS_A], groups="bleu")) == {"bleu1", "bleu2", "bleu3", "bleu4"}


# --------------------------------------------------------------------------- exact values
def test_identical_and_disjoint_exact_values():
    same = compute_metrics(["the cat sat on the mat"], [["the cat sat on the mat"]])
    for k, v in same.items():
        assert v == pytest.approx(100.0), k
    disjoint = compute_metrics(["alpha beta gamma delta"], [["one two three four"]], groups=("rouge", "bleu", "sacrebleu"))
    for k, v in disjoint.items():
        assert v == 0.0, k


def test_rouge1_hand_checked():
    # 2 of 3 unigrams shared each way: P = R = 2/3, F = 2/3
    out = compute_metrics(["the cat ran"], [["the cat sat"]], groups="rouge")
    assert out["rouge1"] == pytest.approx(200 / 3)
    assert out["rouge2"] == pytest.approx(50.0)  # "the cat" of 2 bigrams


def test_short_identical_string_bleu4_below_100():
    # nltk method1 smooths the missing 4-gram instead of skipping it: exp((3*log 1 + log 0.1)/4)
    out = compute_metrics(["a b c"], [["a b c"]], groups="bleu")
    assert out["bleu3"] == pytest.approx(100.0)
    assert out["bleu4"] == pytest.approx(100 * 0.1 ** 0.25)


# --------------------------------------------------------------------------- vs libraries
def test_rouge_matches_rouge_score_single_reference():
    out = compute_metrics(PREDS, [[a] for a in REFS_A], groups="rouge")
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = sum(rouge_direct([a], p)[key].fmeasure for p, a in zip(PREDS, REFS_A)) / len(PREDS)
        assert out[key] == pytest.approx(100 * expected)


def test_bleu_matches_nltk_corpus_bleu():
    refs = [[a, b] for a, b in zip(REFS_A, REFS_B)]
    out = compute_metrics(PREDS, refs, groups="bleu")
    tok = metrics.bleu_tokenize
    for n, key in enumerate(("bleu1", "bleu2", "bleu3", "bleu4"), start=1):
        expected = corpus_bleu([[tok(r) for r in rs] for rs in refs], [tok(p) for p in PREDS],
                               weights=(1 / n,) * n, smoothing_function=SMOOTH)
        assert out[key] == pytest.approx(100 * expected)
    assert out["bleu1"] > out["bleu4"] > 0


def test_bleu_tokenizer():
    assert metrics.bleu_tokenize("Don't STOP, U.S. 3.5!") == ["don", "'", "t", "stop", ",", "u", ".", "s", ".",
                                                              "3", ".", "5", "!"]
    assert metrics.bleu_tokenize("  ") == []


def test_sacrebleu_and_chrf_match_library_single_reference():
    out = compute_metrics(PREDS, [[a] for a in REFS_A], groups=("sacrebleu", "chrf"))
    assert out["sacrebleu"] == pytest.approx(BLEU().corpus_score(PREDS, [REFS_A]).score)
    assert out["chrf"] == pytest.approx(CHRF().corpus_score(PREDS, [REFS_A]).score)


# --------------------------------------------------------------------------- multi-reference
def test_rouge_multi_reference_at_least_best_single():
    multi = compute_metrics(PREDS, [[a, b] for a, b in zip(REFS_A, REFS_B)], groups="rouge")
    only_a = compute_metrics(PREDS, [[a] for a in REFS_A], groups="rouge")
    only_b = compute_metrics(PREDS, [[b] for b in REFS_B], groups="rouge")
    for key in multi:
        assert multi[key] >= max(only_a[key], only_b[key]) - 1e-9
    # per example it is exactly the best single reference
    per = per_example_scores(PREDS, [[a, b] for a, b in zip(REFS_A, REFS_B)], groups="rouge")
    for i, (p, a, b) in enumerate(zip(PREDS, REFS_A, REFS_B)):
        best = max(rouge_direct([a], p)["rouge1"].fmeasure, rouge_direct([b], p)["rouge1"].fmeasure)
        assert per["rouge1"][i] == pytest.approx(100 * best)


def test_sacrebleu_multi_reference_equals_streams():
    out = compute_metrics(PREDS, [[a, b] for a, b in zip(REFS_A, REFS_B)], groups=("sacrebleu", "chrf"))
    assert out["sacrebleu"] == pytest.approx(BLEU().corpus_score(PREDS, [REFS_A, REFS_B]).score)
    assert out["chrf"] == pytest.approx(CHRF().corpus_score(PREDS, [REFS_A, REFS_B]).score)
    assert out["sacrebleu"] > BLEU().corpus_score(PREDS, [REFS_A]).score
    assert sacrebleu_signatures()["sacrebleu"].startswith("nrefs:2|")


def test_variable_number_of_references():
    refs = [[REFS_A[0], REFS_B[0]], [REFS_A[1]], ["", REFS_B[2], "   ", REFS_A[2]]]
    out = compute_metrics(PREDS, refs)
    # sacrebleu: pad missing references with None (dropped), empty strings removed
    streams = [[REFS_A[0], REFS_A[1], REFS_B[2]], [REFS_B[0], None, REFS_A[2]]]
    assert metrics.reference_streams([[r for r in rs if r.strip()] for rs in refs]) == streams
    assert out["sacrebleu"] == pytest.approx(BLEU().corpus_score(PREDS, streams).score)
    assert out["chrf"] == pytest.approx(CHRF().corpus_score(PREDS, streams).score)
    sigs = sacrebleu_signatures()
    assert "nrefs:var" in sigs["sacrebleu"] and "nrefs:var" in sigs["chrf"]
    assert "tok:13a" in sigs["sacrebleu"] and "version:" in sigs["chrf"]
    # rouge: best of the non-empty references
    kept = [[REFS_A[0], REFS_B[0]], [REFS_A[1]], [REFS_B[2], REFS_A[2]]]
    expected = sum(rouge_direct(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, kept)) / 3
    assert out["rougeL"] == pytest.approx(100 * expected)
    tok = metrics.bleu_tokenize
    expected = corpus_bleu([[tok(r) for r in rs] for rs in kept], [tok(p) for p in PREDS],
                           weights=(0.25,) * 4, smoothing_function=SMOOTH)
    assert out["bleu4"] == pytest.approx(100 * expected)


def test_empty_string_reference_would_change_sacrebleu():
    # Why we pad with None: sacrebleu keeps "" as a zero-length reference, which here
    # becomes the closest reference length and removes the brevity penalty.
    pred, ref = "a b c d", "a b c d e f g h i j k l"
    with_empty = BLEU().corpus_score([pred], [[ref], [""]]).score
    ours = compute_metrics([pred], [[ref, ""]], groups="sacrebleu")["sacrebleu"]
    assert ours == pytest.approx(BLEU().corpus_score([pred], [[ref]]).score)
    assert ours == pytest.approx(BLEU().corpus_score([pred], [[ref], [None]]).score)
    assert ours == pytest.approx(100 * math.exp(1 - 12 / 4))  # all n-grams match; brevity penalty only
    assert with_empty == pytest.approx(100.0)


# --------------------------------------------------------------------------- empty inputs
def test_empty_predictions_score_zero():
    out = compute_metrics(["", "   "], [["the cat sat"], ["a dog ran"]])
    assert all(v == 0.0 for v in out.values()), out
    per = per_example_scores(["", "   "], [["the cat sat"], ["a dog ran"]])
    assert all(v == [0.0, 0.0] for v in per.values()), per


def test_mixed_empty_prediction():
    preds = ["the cat sat on the mat", ""]
    refs = [["the cat sat on the mat"], ["a dog ran in the park"]]
    out = compute_metrics(preds, refs)
    assert out["rouge1"] == pytest.approx(50.0)
    assert out["sacrebleu"] == pytest.approx(BLEU().corpus_score(preds, [[r[0] for r in refs]]).score)
    per = per_example_scores(preds, refs)
    assert per["rouge1"] == [pytest.approx(100.0), 0.0]
    assert per["bleu4"][1] == 0.0 and per["chrf"][1] == 0.0


def test_input_errors():
    with pytest.raises(ValueError, match="no predictions to score"):
        compute_metrics([], [])
    with pytest.raises(ValueError, match="no predictions to score"):
        per_example_scores([], [])
    with pytest.raises(ValueError, match=r"2 predictions.*1 reference"):
        compute_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="example 1"):
        compute_metrics(["a", "b"], [["a"], ["", "  "]])
    with pytest.raises(ValueError, match="example 0"):
        per_example_scores(["a"], [[]])
    with pytest.raises(ValueError, match="unknown metric group"):
        compute_metrics(["a"], [["a"]], groups=("meteor",))
    with pytest.raises(TypeError, match=r"references\[0\]"):
        compute_metrics(["a"], ["a"])


# --------------------------------------------------------------------------- sentences
@pytest.mark.parametrize("text, expected", [
    ("The cat sat. The dog ran! Did it? Yes.", ["The cat sat.", "The dog ran!", "Did it?", "Yes."]),
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("The U.S. Army said so. It was 3 p.m. today.", ["The U.S. Army said so.", "It was 3 p.m. today."]),
    ("Prices rose 3.5% in 2020. 2021 was worse.", ["Prices rose 3.5% in 2020.", "2021 was worse."]),
    ('He said "Stop." "Why?" she asked.', ['He said "Stop."', '"Why?" she asked.']),
    ("first line\nsecond line\n\n  third. Fourth", ["first line", "second line", "third.", "Fourth"]),
    ("no split here. lowercase follows", ["no split here. lowercase follows"]),
    ("e.g. This is J. R. R. Tolkien.", ["e.g. This is J. R. R. Tolkien."]),
    ("", []),
    (" \n\t ", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_rougelsum_uses_sentence_split_and_beats_rougel_on_reordered_sentences():
    ref = "The cat sat on the mat. The dog ran in the park."
    pred = "The dog ran in the park. The cat sat on the mat."
    out = compute_metrics([pred], [[ref]], groups="rouge")
    direct = rouge_direct(["\n".join(split_sentences(ref))], "\n".join(split_sentences(pred)))
    assert out["rougeLsum"] == pytest.approx(100 * direct["rougeLsum"].fmeasure)
    assert out["rougeL"] == pytest.approx(100 * rouge_direct([ref], pred)["rougeL"].fmeasure)
    # summary-level LCS matches each sentence separately; plain LCS only one of them
    assert out["rougeLsum"] == pytest.approx(100.0)
    assert out["rougeL"] == pytest.approx(50.0)
    # without newlines rouge_score sees one sentence: rougeLsum would equal rougeL
    assert rouge_direct([ref], pred)["rougeLsum"].fmeasure == pytest.approx(0.5)


# --------------------------------------------------------------------------- per example
def test_per_example_scores_lengths_and_values():
    refs = [[a, b] for a, b in zip(REFS_A, REFS_B)]
    per = per_example_scores(PREDS, refs)
    assert set(per) == set(compute_metrics(PREDS, refs))
    assert all(len(v) == len(PREDS) for v in per.values())
    tok = metrics.bleu_tokenize
    for i, (p, rs) in enumerate(zip(PREDS, refs)):
        assert per["bleu2"][i] == pytest.approx(
            100 * sentence_bleu([tok(r) for r in rs], tok(p), weights=(0.5, 0.5), smoothing_function=SMOOTH))
        assert per["sacrebleu"][i] == pytest.approx(BLEU(effective_order=True).sentence_score(p, rs).score)
        assert per["chrf"][i] == pytest.approx(CHRF().sentence_score(p, rs).score)
        assert per["rougeL"][i] == pytest.approx(100 * rouge_direct(rs, p)["rougeL"].fmeasure)
    corpus = compute_metrics(PREDS, refs)
    # ROUGE is a mean of per-example scores; corpus BLEU is not a mean of sentence BLEU
    assert sum(per["rouge2"]) / 3 == pytest.approx(corpus["rouge2"])
    assert sum(per["bleu4"]) / 3 != pytest.approx(corpus["bleu4"])
    assert set(per_example_scores(PREDS, refs, groups=("rouge",))) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_signatures_before_and_after_use():
    # sacrebleu refuses to sign a metric that has not scored anything; we show nrefs:?
    from metrics.core import _signature
    assert _signature(BLEU()).startswith("nrefs:?|")
    compute_metrics(["a b c d"], [["a b c d"]], groups=("sacrebleu", "chrf"))
    sigs = sacrebleu_signatures()
    assert set(sigs) == {"sacrebleu", "chrf"}
    assert sigs["sacrebleu"] == _signed(BLEU())
    assert sigs["chrf"] == _signed(CHRF())
    assert sigs["sacrebleu"].startswith("nrefs:1|")


def _signed(metric):
    metric.corpus_score(["x"], [["x"]])
    return str(metric.get_signature())
