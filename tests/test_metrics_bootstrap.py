"""Tests for metrics.bootstrap: the fast statistics equal the libraries; interval behaviour."""
import csv
import random
from pathlib import Path

import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from sacrebleu.metrics import BLEU, CHRF

import metrics
from metrics import bootstrap_ci, compute_metrics, metric_statistics, paired_bootstrap, sacrebleu_signatures
from metrics.bootstrap import _draw_counts, resampled_scores

SHARED = Path(__file__).resolve().parents[2] / "shared"
KEYS = ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu2", "bleu3", "bleu4", "sacrebleu", "chrf"]
WORDS = ("the a cat dog sat ran on in mat park big small red quickly house tree bird sang loud "
         "under over near far blue green man woman child played ate slept").split()


def corpus(n: int, noise: float, seed: int = 0):
    """n references (1-3 per example, some sentences with punctuation) and predictions with
    about ``noise`` of their words replaced; a few predictions are empty or very short."""
    rng = random.Random(seed)
    refs, preds = [], []
    for i in range(n):
        ref = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice(["", ".", "!"])
               for _ in range(rng.randint(1, 3))]
        words = ref[0].split()
        pred = " ".join(w if rng.random() > noise else rng.choice(WORDS) for w in words)
        if i % 17 == 3:
            pred = ""
        elif i % 13 == 5:
            pred = " ".join(words[:2])
        refs.append(ref)
        preds.append(pred)
    return preds, refs


def paradetox(n: int):
    with open(SHARED / "data/paradetox/paradetox.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:n]
    refs = [[r[k] for k in ("neutral1", "neutral2", "neutral3") if r[k] and r[k].strip()] for r in rows]
    return [r["toxic"] for r in rows], refs


# --------------------------------------------------------------------------- statistics = libraries
def _library_scores(preds, refs):
    """Every corpus metric straight from nltk and sacrebleu (ROUGE via compute_metrics' own test)."""
    tok = metrics.bleu_tokenize
    out = {}
    for n in range(1, 5):
        out[f"bleu{n}"] = 100 * corpus_bleu([[tok(r) for r in rs] for rs in refs], [tok(p) for p in preds],
                                            weights=(1 / n,) * n, smoothing_function=SmoothingFunction().method1)
    streams = metrics.reference_streams(refs)
    out["sacrebleu"] = BLEU().corpus_score(preds, streams).score
    out["chrf"] = CHRF().corpus_score(preds, streams).score
    return out


@pytest.mark.parametrize("source", ["synthetic", "paradetox"])
def test_statistics_reproduce_library_corpus_scores_exactly(source):
    if source == "paradetox" and not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED})")
    preds, refs = corpus(150, 0.3) if source == "synthetic" else paradetox(300)
    stats = metric_statistics(preds, refs)
    assert list(stats) == KEYS
    full = compute_metrics(preds, refs)
    for key, st in stats.items():
        assert st.corpus() == full[key], key
    for key, value in _library_scores(preds, refs).items():
        assert stats[key].corpus() == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_every_resample_equals_compute_metrics_on_the_resampled_corpus():
    # The fast path against brute force: materialise each resample and score it from text.
    preds, refs = corpus(30, 0.4, seed=3)
    (fast,) = resampled_scores([metric_statistics(preds, refs)], n_resamples=12, seed=7)
    counts = next(_draw_counts(len(preds), 12, 7))
    for r, row in enumerate(counts):
        idx = [i for i, c in enumerate(row) for _ in range(int(c))]
        slow = compute_metrics([preds[i] for i in idx], [refs[i] for i in idx])
        for key in KEYS:
            assert fast[key][r] == pytest.approx(slow[key], rel=1e-9, abs=1e-9), (r, key)


def test_draw_counts_are_resamples_with_replacement():
    chunks = list(_draw_counts(50, 300, seed=1))
    counts = np.concatenate(chunks)
    assert counts.shape == (300, 50) and [len(c) for c in chunks] == [128, 128, 44]
    assert (counts.sum(1) == 50).all()
    assert (counts == 0).mean() == pytest.approx((49 / 50) ** 50, abs=0.02)  # ~36.4% left out


# --------------------------------------------------------------------------- intervals
def test_intervals_contain_point_estimate():
    preds, refs = corpus(200, 0.3)
    full = compute_metrics(preds, refs)
    ci = bootstrap_ci(preds, refs, n_resamples=500)
    assert list(ci) == KEYS
    for key, (low, high) in ci.items():
        assert low < full[key] < high, (key, low, full[key], high)
        assert 0 <= low and high <= 100


def test_intervals_shrink_as_n_grows():
    small = bootstrap_ci(*corpus(40, 0.3, seed=1), n_resamples=400)
    large = bootstrap_ci(*corpus(400, 0.3, seed=1), n_resamples=400)
    for key in KEYS:
        w_small, w_large = small[key][1] - small[key][0], large[key][1] - large[key][0]
        assert w_large < 0.6 * w_small, (key, w_small, w_large)  # ~1/sqrt(10) expected


def test_higher_confidence_gives_wider_interval():
    preds, refs = corpus(80, 0.3)
    c90 = bootstrap_ci(preds, refs, groups="chrf", confidence=0.90, n_resamples=300)["chrf"]
    c99 = bootstrap_ci(preds, refs, groups="chrf", confidence=0.99, n_resamples=300)["chrf"]
    assert c99[0] < c90[0] < c90[1] < c99[1]


def test_deterministic_with_seed():
    preds, refs = corpus(60, 0.3)
    a = bootstrap_ci(preds, refs, n_resamples=200, seed=5)
    assert a == bootstrap_ci(preds, refs, n_resamples=200, seed=5)
    assert a != bootstrap_ci(preds, refs, n_resamples=200, seed=6)


def test_groups_and_per_example_extra_metric():
    preds, refs = corpus(50, 0.3)
    extra = [float(i % 10) for i in range(50)]
    extra[0] = extra[1] = None  # not counted
    ci = bootstrap_ci(preds, refs, groups=("sacrebleu",), n_resamples=300, per_example={"my_score": extra})
    assert set(ci) == {"sacrebleu", "my_score"}
    mean = np.mean([v for v in extra if v is not None])
    assert ci["my_score"][0] < mean < ci["my_score"][1]
    assert set(bootstrap_ci(preds, refs, groups="rouge", n_resamples=10)) == set(KEYS[:4])


def test_single_example_gives_zero_width():
    ci = bootstrap_ci(["the cat sat"], [["the cat sat on the mat"]], n_resamples=20)
    full = compute_metrics(["the cat sat"], [["the cat sat on the mat"]])
    for key, (low, high) in ci.items():
        assert low == pytest.approx(full[key]) == pytest.approx(high), key


def test_bootstrap_leaves_sacrebleu_signature_alone():
    compute_metrics(["a b c d"], [["a b c d"]], groups=("sacrebleu", "chrf"))
    bootstrap_ci(*corpus(20, 0.3), n_resamples=5)  # variable reference counts
    assert sacrebleu_signatures()["sacrebleu"].startswith("nrefs:1|")


# --------------------------------------------------------------------------- paired
def test_paired_system_with_itself_is_exactly_zero():
    preds, refs = corpus(80, 0.3)
    out = paired_bootstrap(preds, list(preds), refs, n_resamples=200)
    assert list(out) == KEYS
    for key, d in out.items():
        assert d == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}, key


def test_clearly_better_system_has_interval_above_zero():
    good, refs = corpus(100, 0.1, seed=2)
    bad, _ = corpus(100, 0.6, seed=2)
    out = paired_bootstrap(good, bad, refs, n_resamples=300)
    full_good, full_bad = compute_metrics(good, refs), compute_metrics(bad, refs)
    for key, d in out.items():
        assert d["difference"] == pytest.approx(full_good[key] - full_bad[key]), key
        assert 0 < d["low"] < d["difference"] < d["high"], (key, d)
        assert d["p_value"] == 0.0, key
    reverse = paired_bootstrap(bad, good, refs, n_resamples=300)
    for key, d in reverse.items():
        assert d["high"] < 0 and d["p_value"] == 0.0, key


def test_paired_uses_the_same_resamples_for_both_systems():
    good, refs = corpus(60, 0.2, seed=4)
    bad, _ = corpus(60, 0.5, seed=4)
    sa, sb = resampled_scores([metric_statistics(good, refs), metric_statistics(bad, refs)], 200, seed=3)
    (alone,) = resampled_scores([metric_statistics(good, refs)], 200, seed=3)
    assert all((sa[k] == alone[k]).all() for k in KEYS)  # draws do not depend on the number of systems
    out = paired_bootstrap(good, bad, refs, n_resamples=200, seed=3)
    for key in KEYS:
        d = sa[key] - sb[key]
        assert [out[key]["low"], out[key]["high"]] == pytest.approx(np.percentile(d, [2.5, 97.5])), key
        assert out[key]["p_value"] == (d <= 0).mean(), key
    # paired differences vary much less than two independent intervals would suggest
    ci_a, ci_b = bootstrap_ci(good, refs, n_resamples=200), bootstrap_ci(bad, refs, n_resamples=200)
    key = "chrf"
    assert out[key]["high"] - out[key]["low"] < (ci_a[key][1] - ci_a[key][0]) + (ci_b[key][1] - ci_b[key][0])


def test_sign_flip_p_value_for_close_systems():
    preds, refs = corpus(60, 0.3, seed=8)
    other = list(preds)
    other[0] = ""  # one worse example: the systems tie on every resample that leaves it out
    out = paired_bootstrap(preds, other, refs, groups="chrf", n_resamples=500)["chrf"]
    assert out["difference"] > 0 and out["high"] > 0
    assert out["low"] == 0.0  # ties are exact: identical statistics give identical scores
    assert out["p_value"] == pytest.approx((59 / 60) ** 60, abs=0.06)  # P(example 0 not drawn) ~ 0.36


def test_input_errors():
    preds, refs = corpus(5, 0.3)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(preds, refs, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(preds, refs, confidence=95)
    with pytest.raises(ValueError, match="per_example"):
        bootstrap_ci(preds, refs, per_example={"x": [1.0]})
    with pytest.raises(ValueError, match="system A has 5 predictions, system B 4"):
        paired_bootstrap(preds, preds[:4], refs)
    with pytest.raises(ValueError, match="per_example keys differ"):
        paired_bootstrap(preds, preds, refs, per_example_a={"x": [1.0] * 5})
    with pytest.raises(ValueError, match="unknown metric group"):
        bootstrap_ci(preds, refs, groups="meteor")
