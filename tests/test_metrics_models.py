"""Tests for the model-based metrics (BERTScore, style accuracy, perplexity, content preservation)
with tiny random models built from the real tokenizers in ../shared, and their offline skips."""
import math
from pathlib import Path

import pytest
import torch

import metrics
from metrics import (MetricResult, MetricSkipped, bertscore, bootstrap_ci, clear_model_cache, content_preservation,
                     fluency_perplexity, style_accuracy)

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZERS = SHARED / "tokenizers"
needs_shared = pytest.mark.skipif(not TOKENIZERS.is_dir(), reason=f"../shared is absent ({SHARED})")
UNKNOWN_HUB_NAME = "kd-tests/not-a-cached-model"


def _direct_perplexity(path: str, text: str) -> float:
    """exp(mean NLL) computed independently: transformers' own LM loss with EOS prepended."""
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast
    tok, model = GPT2TokenizerFast.from_pretrained(path), GPT2LMHeadModel.from_pretrained(path).eval()
    ids = torch.tensor([[tok.eos_token_id] + tok(text).input_ids])
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=ids).loss.item())


# --------------------------------------------------------------------------- BERTScore
def test_bertscore_identical_is_100_and_different_is_lower(tiny_bert):
    preds = ["the cat sat on the mat", "a man is playing the guitar"]
    same = bertscore(preds, [[p] for p in preds], tiny_bert, num_layers=2)
    assert isinstance(same, MetricResult) and same.ok
    assert set(same.scores) == set(metrics.BERTSCORE_KEYS) == set(same.per_example)
    for key, value in same.scores.items():
        assert value == pytest.approx(100.0, abs=1e-3), key  # cosine of a token with itself is 1
    other = bertscore(preds, [["stock markets fell sharply today"], ["the weather was cold"]], tiny_bert, num_layers=2)
    assert all(v < 99.0 for v in other.per_example["bertscore_f1"])
    assert "|L2|no-idf|no-rescale|bert_score:" in same.signature


def test_bertscore_empty_predictions_scored_zero_without_crash(tiny_bert, capsys):
    out = bertscore(["", "   ", "the cat sat"], [["a dog ran"], ["the park"], ["the cat sat"]], tiny_bert, num_layers=2)
    assert out.per_example["bertscore_f1"][:2] == [0.0, 0.0]
    assert out.per_example["bertscore_f1"][2] == pytest.approx(100.0, abs=1e-3)
    assert out.scores["bertscore_f1"] == pytest.approx(100 / 3, abs=1e-3)
    assert any("2 empty prediction(s) scored 0" in n for n in out.notes)
    only_empty = bertscore([""], [["a dog ran"]], tiny_bert, num_layers=2)
    assert only_empty.scores == {k: 0.0 for k in metrics.BERTSCORE_KEYS}


def test_bert_score_itself_crashes_on_empty_candidates(tiny_bert):
    # The failure the guard exists for (bert_score 0.3.13 + transformers 5): if this stops
    # raising, bert_score was fixed and the guard's note in metrics/bertscore.py can go.
    import bert_score
    with pytest.raises(AttributeError, match="build_inputs_with_special_tokens"):
        bert_score.score([""], [""], model_type=tiny_bert, num_layers=2, device="cpu")


def test_bertscore_multi_reference_takes_the_best(tiny_bert):
    pred, good, bad = "the cat sat on the mat", "the cat sat on the mat", "stock markets fell"
    multi = bertscore([pred], [[bad, good]], tiny_bert, num_layers=2)
    single_bad = bertscore([pred], [[bad]], tiny_bert, num_layers=2)
    assert multi.scores["bertscore_f1"] == pytest.approx(100.0, abs=1e-3)
    assert single_bad.scores["bertscore_f1"] < multi.scores["bertscore_f1"]
    near = bertscore([pred], [["the cat sat on a mat", bad]], tiny_bert, num_layers=2)
    singles = [bertscore([pred], [[r]], tiny_bert, num_layers=2) for r in ("the cat sat on a mat", bad)]
    for key in metrics.BERTSCORE_KEYS:  # each of P, R, F1 is the max over references (bert_score's rule)
        assert near.scores[key] == pytest.approx(max(s.scores[key] for s in singles), abs=1e-4), key


def test_bertscore_layers_default_and_long_inputs(tiny_bert):
    default = bertscore(["the cat sat"], [["a cat sat down"]], tiny_bert)
    assert "|L2|" in default.signature and any("last layer (2)" in n for n in default.notes)
    first = bertscore(["the cat sat"], [["a cat sat down"]], tiny_bert, num_layers=1)
    assert "|L1|" in first.signature and first.scores != default.scores
    long = bertscore(["word " * 300], [["word " * 200]], tiny_bert, num_layers=2)  # > 64 positions: truncated
    assert long.ok and long.scores["bertscore_f1"] == pytest.approx(100.0, abs=1e-3)
    from metrics.bertscore import _default_layers
    assert _default_layers("roberta-large", None) == (17, None)
    assert _default_layers("/models/roberta-large", None) == (17, None)  # a local copy by its directory name
    bad_layer = bertscore(["a"], [["a"]], tiny_bert, num_layers=9)
    assert isinstance(bad_layer, MetricSkipped) and "num_layers" in bad_layer.reason


def test_bertscore_per_example_feeds_bootstrap(tiny_bert):
    preds, refs = ["the cat sat", "a dog ran", "", "birds sing"], [["the cat sat"], ["a dog ran"], ["x y"], ["z"]]
    out = bertscore(preds, refs, tiny_bert, num_layers=2)
    ci = bootstrap_ci(preds, refs, groups="chrf", n_resamples=200, per_example=out.per_example)
    assert set(ci) == {"chrf", *metrics.BERTSCORE_KEYS}
    low, high = ci["bertscore_f1"]
    assert low <= out.scores["bertscore_f1"] <= high


@needs_shared
def test_roberta_tokenizer_gets_its_prefix_space(tmp_path):
    # bert_score asks encode() for add_prefix_space=True; transformers 5 ignores it there.
    from bert_score.utils import get_tokenizer, sent_encode
    from transformers import RobertaTokenizer
    from metrics.bertscore import _tokenizer
    RobertaTokenizer.from_pretrained(str(TOKENIZERS / "gpt2"), model_max_length=128).save_pretrained(tmp_path)
    plain = get_tokenizer(str(tmp_path))
    assert plain.convert_ids_to_tokens(sent_encode(plain, "hello world"))[1] == "hello"  # the drift
    fixed = _tokenizer(str(tmp_path), model=None)
    assert fixed.convert_ids_to_tokens(sent_encode(fixed, "hello world"))[1:3] == ["Ġhello", "Ġworld"]


def test_content_preservation(tiny_bert):
    sources = ["you are a stupid idiot", "this is damn good"]
    out = content_preservation(sources, list(sources), tiny_bert, num_layers=2)
    assert set(out.scores) == {"content_preservation"}
    assert out.scores["content_preservation"] == pytest.approx(100.0, abs=1e-3)
    changed = content_preservation(sources, ["you are not nice", ""], tiny_bert, num_layers=2)
    assert 0 < changed.per_example["content_preservation"][0] < 99 and changed.per_example["content_preservation"][1] == 0
    assert any(n.startswith("content_preservation: 1 empty") for n in changed.notes)
    with pytest.raises(ValueError, match="2 sources but 1 predictions"):
        content_preservation(sources, ["x"], tiny_bert, num_layers=2)


# --------------------------------------------------------------------------- style accuracy
def test_style_accuracy_values_match_the_classifier(tiny_classifiers):
    from transformers import BertForSequenceClassification, BertTokenizerFast
    preds = ["you are an idiot", "thank you very much", ""]
    out = style_accuracy(preds, tiny_classifiers["random"])
    assert out.ok and set(out.scores) == {"style_accuracy", "style_nontoxic_pct"}
    model = BertForSequenceClassification.from_pretrained(tiny_classifiers["random"]).eval()
    tok = BertTokenizerFast.from_pretrained(tiny_classifiers["random"])
    with torch.no_grad():
        p = model(**tok(preds, padding=True, return_tensors="pt")).logits.softmax(-1)
    expected = [100 * (1 - p[i, 1].item()) for i in range(3)]
    assert out.per_example["style_accuracy"] == pytest.approx(expected, abs=1e-4)
    assert out.per_example["style_nontoxic_pct"] == [0.0 if p[i].argmax() == 1 else 100.0 for i in range(3)]
    assert 0 < out.scores["style_accuracy"] < 100
    assert style_accuracy(preds, tiny_classifiers["random"], toxic_label=1).scores == out.scores
    assert "toxic=toxic" in out.signature


def test_style_accuracy_extremes_and_labels(tiny_classifiers):
    preds = ["you are an idiot", "have a nice day"]
    toxic = style_accuracy(preds, tiny_classifiers["toxic"])
    assert toxic.scores["style_accuracy"] < 1e-6 and toxic.scores["style_nontoxic_pct"] == 0.0
    neutral = style_accuracy(preds, tiny_classifiers["neutral"])
    assert neutral.scores["style_accuracy"] == pytest.approx(100.0) and neutral.scores["style_nontoxic_pct"] == 100.0
    wrong = style_accuracy(preds, tiny_classifiers["random"], toxic_label="hate")
    assert isinstance(wrong, MetricSkipped)
    assert "no label 'hate' (labels: neutral, toxic)" in wrong.reason
    assert not style_accuracy(preds, tiny_classifiers["random"], toxic_label=2).ok


# --------------------------------------------------------------------------- perplexity
def test_perplexity_equals_exp_mean_nll(tiny_gpt2):
    text = "The cat sat on the mat."
    out = fluency_perplexity([text], tiny_gpt2)
    assert out.ok and set(out.scores) == {"fluency_perplexity"}
    assert out.per_example["fluency_perplexity"][0] == pytest.approx(_direct_perplexity(tiny_gpt2, text), rel=1e-4)
    assert 1 < out.scores["fluency_perplexity"] < 50257 * 10  # a random model: around the vocabulary size


def test_perplexity_batching_and_empty_predictions(tiny_gpt2):
    texts = ["Hello.", "", "A much longer sentence that pads every other one in its batch.", "  ", "Short one"]
    out = fluency_perplexity(texts, tiny_gpt2, batch_size=8)
    per = out.per_example["fluency_perplexity"]
    assert per[1] is None and per[3] is None
    for i in (0, 2, 4):  # padding in a batch does not change a sentence's perplexity
        assert per[i] == pytest.approx(fluency_perplexity([texts[i]], tiny_gpt2).per_example["fluency_perplexity"][0], rel=1e-4)
    assert out.scores["fluency_perplexity"] == pytest.approx((per[0] + per[2] + per[4]) / 3)
    assert out.notes == ("fluency_perplexity: 2 empty prediction(s) excluded",)
    ci = bootstrap_ci(texts, [["x"]] * 5, groups="chrf", n_resamples=100, per_example=out.per_example)
    assert ci["fluency_perplexity"][0] <= out.scores["fluency_perplexity"] <= ci["fluency_perplexity"][1]
    none = fluency_perplexity(["", " "], tiny_gpt2)
    assert isinstance(none, MetricSkipped) and "every prediction is empty" in none.reason


# --------------------------------------------------------------------------- skips
@pytest.mark.parametrize("call", [
    lambda name: bertscore(["a"], [["a"]], name),
    lambda name: content_preservation(["a"], ["a"], name),
    lambda name: style_accuracy(["a"], name),
    lambda name: fluency_perplexity(["a"], name),
], ids=["bertscore", "content_preservation", "style_accuracy", "fluency_perplexity"])
def test_uncached_hub_name_offline_is_skipped_without_a_connection(call, no_connections):
    """Offline, the hub libraries' network retries never start: no socket connects at all."""
    attempts = no_connections
    clear_model_cache()
    out = call(UNKNOWN_HUB_NAME)
    assert attempts == []
    assert isinstance(out, MetricSkipped) and not out.ok
    assert UNKNOWN_HUB_NAME in out.reason and "offline" in out.reason and "\n" not in out.reason
    assert out.scores == {} and out.per_example == {} and out.notes == (str(out),)
    assert str(out).startswith(f"{out.name} skipped: ")


def test_unreachable_hub_is_probed_once_not_retried(monkeypatch):
    # Offline flags unset: the project's 3-second probe (utils.hub.hub_reachable) decides, and the
    # failure is cached, so a second metric on the same model does not probe again.
    import utils.hub
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    probes = []
    monkeypatch.setattr(utils.hub, "hub_reachable", lambda timeout=3.0: probes.append(1) or False)
    import models
    monkeypatch.setattr(models, "hub_reachable", utils.hub.hub_reachable)
    clear_model_cache()
    first = bertscore(["a"], [["a"]], UNKNOWN_HUB_NAME)
    second = content_preservation(["a"], ["a"], UNKNOWN_HUB_NAME)
    assert not first.ok and not second.ok and "cannot be reached" in first.reason
    assert probes == [1]


def test_missing_or_broken_local_model_is_skipped(tmp_path):
    missing = style_accuracy(["a"], str(tmp_path / "nope"))
    assert not missing.ok and "no such directory" in missing.reason
    (tmp_path / "config.json").write_text("{}")
    broken = fluency_perplexity(["a"], str(tmp_path))
    assert not broken.ok and str(tmp_path) in broken.reason and "\n" not in broken.reason


def test_cached_hub_model_loads_from_its_snapshot_without_the_network(tiny_bert, tmp_path, monkeypatch):
    # A hub name in the local cache is loaded from its snapshot directory: no probe, no request,
    # even with the offline flags unset.
    import shutil

    import huggingface_hub.constants
    import models
    snapshot = tmp_path / "models--kd-tests--tiny-bert" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_bert, snapshot)
    (tmp_path / "models--kd-tests--tiny-bert" / "refs").mkdir()
    (tmp_path / "models--kd-tests--tiny-bert" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: pytest.fail("the hub was probed"))
    import bert_score.utils
    loaded_from = []
    real_get_model = bert_score.utils.get_model
    monkeypatch.setattr(bert_score.utils, "get_model", lambda src, *a: loaded_from.append(src) or real_get_model(src, *a))
    clear_model_cache()
    out = bertscore(["the cat sat"], [["the cat sat"]], "kd-tests/tiny-bert", num_layers=2)
    assert out.ok and out.scores["bertscore_f1"] == pytest.approx(100.0, abs=1e-3)
    assert loaded_from == [str(snapshot)]  # bert_score gets a directory, never the hub name
    assert out.signature.startswith("kd-tests/tiny-bert|L2|")
