"""The benchmark's blocklist (and the exported models') stops case and spacing variants of each phrase."""
from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import NoBadWordsLogitsProcessor

from generation import bad_words_ids, case_variants

PHRASES = ["idiot", "stupid", "shut up"]
TEXTS = ["Idiot ! Stupid people . Shut Up", "you idiot", "SHUT UP now", "(idiot)", "Shut up, you STUPID man",
         "what an idiot", "he said:stupid", "Stupid", "shut up"]


def _tokenizer(shared, kind):
    from transformers import GPT2TokenizerFast, T5TokenizerFast
    cls = T5TokenizerFast if kind == "t5" else GPT2TokenizerFast
    return cls.from_pretrained(str(shared / "tokenizers" / kind))


def test_case_variants():
    assert case_variants("shut up") == ["shut up", "SHUT UP", "Shut Up", "Shut up"]
    assert case_variants("McDonald") == ["McDonald", "mcdonald", "MCDONALD", "Mcdonald"]


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_every_variant_in_real_text_is_blocked_during_generation(shared, kind):
    """Force-decode each text token by token: the blocklist processor must forbid some token of
    every phrase occurrence, whatever its case or spacing (what beam search would see)."""
    tok = _tokenizer(shared, kind)
    bad = bad_words_ids(PHRASES, tok)
    processor = NoBadWordsLogitsProcessor(bad, eos_token_id=tok.eos_token_id)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        blocked_at = []
        for i in range(len(ids)):
            scores = processor(torch.tensor([ids[:i] or [tok.eos_token_id]]), torch.zeros(1, len(tok)))
            if scores[0, ids[i]] == float("-inf"):
                blocked_at.append(i)
        assert blocked_at, f"{kind}: {text!r} ({tok.convert_ids_to_tokens(ids)}) passes the blocklist"


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_harmless_text_is_not_blocked(shared, kind):
    tok = _tokenizer(shared, kind)
    processor = NoBadWordsLogitsProcessor(bad_words_ids(PHRASES, tok), eos_token_id=tok.eos_token_id)
    for text in ["you are wrong, please stop talking", "Stop. Be quiet, please.", "an unwise person"]:
        ids = tok(text, add_special_tokens=False).input_ids
        for i in range(1, len(ids)):
            assert processor(torch.tensor([ids[:i]]), torch.zeros(1, len(tok)))[0, ids[i]] == 0, (kind, text, i)


def test_trained_tokenizer_variants_match_its_own_encoding():
    """A tokenizer trained by this tool (Metaspace BPE): the spaced variant is exactly how the
    phrase is encoded inside a sentence."""
    from settings import TokenizerTrainConfig
    from models import train_tokenizer
    tok = train_tokenizer(["you are an idiot", "Idiot, shut up", "SHUT UP you Stupid fool"] * 20,
                          TokenizerTrainConfig(vocab_size=80))
    bad = bad_words_ids(["idiot", "shut up"], tok)
    for text, phrase in (("you are an idiot", "idiot"), ("well Shut Up now", "Shut Up"), ("so IDIOT", "IDIOT")):
        inside = tok(text, add_special_tokens=False).input_ids
        assert any(inside[i:i + len(b)] == b for b in bad for i in range(len(inside))), (text, phrase)
