"""The data path: each pair tokenized once per run, length-grouped micro-batches, padding accounting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from settings import TokenizerTrainConfig
from data_loader import Seq2SeqCollator, length_grouped_batches, padding_fraction
from demo_data import generate
from models import train_tokenizer


@pytest.fixture(scope="module")
def pairs_and_tok():
    pairs = [(e["source"], e["target"]) for e in generate("keyword_summary", 300, seed=5)]
    tok = train_tokenizer([s for p in pairs for s in p], TokenizerTrainConfig(vocab_size=150))
    return pairs, tok


class CountingTokenizer:
    """Wraps a tokenizer and counts the texts it tokenizes."""

    def __init__(self, tok):
        self.tok, self.texts = tok, 0

    def __call__(self, texts=None, text_target=None, **kw):
        batch = texts if texts is not None else text_target
        self.texts += 1 if isinstance(batch, str) else len(batch)
        return self.tok(texts, text_target=text_target, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_batches_equal_batch_tokenization_and_each_pair_is_tokenized_once(pairs_and_tok):
    pairs, tok = pairs_and_tok
    counting = CountingTokenizer(tok)
    coll = Seq2SeqCollator(counting, "sum: ", max_source_length=24, max_target_length=6)
    first = coll(pairs[:16])
    after_first = counting.texts
    again = coll(pairs[:16])  # a later epoch: only padding
    assert counting.texts == after_first
    for k in first:
        assert torch.equal(first[k], again[k])
    # identical to tokenizing the batch directly, padded to the longest, labels -100 on padding
    src = tok(["sum: " + s for s, _ in pairs[:16]], padding="longest", truncation=True, max_length=24,
              return_tensors="pt")
    tgt = tok(text_target=[t for _, t in pairs[:16]], padding="longest", truncation=True, max_length=6,
              return_tensors="pt")
    assert torch.equal(first["input_ids"], src["input_ids"])
    assert torch.equal(first["attention_mask"], src["attention_mask"])
    assert torch.equal(first["labels"], tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100))
    assert first["input_ids"].dtype == first["labels"].dtype == torch.long
    assert coll.lengths(pairs[:3]).tolist() == [[int(m.sum()), int((lab != -100).sum())] for m, lab in
                                                zip(src["attention_mask"][:3], first["labels"][:3])]


def test_padding_fraction_counts_source_and_target_slots():
    lengths = np.array([[4, 2], [2, 1], [3, 3]])
    # batch {0, 1}: 2 x (4 + 2) = 12 slots for 9 tokens; batch {2}: 6 slots for 6 tokens
    assert padding_fraction([[0, 1], [2]], lengths) == pytest.approx(1 - 15 / 18)
    assert padding_fraction([[0], [1], [2]], lengths) == 0.0


def test_length_grouping_keeps_every_pair_once_and_cuts_padding(pairs_and_tok):
    pairs, tok = pairs_and_tok
    lengths = Seq2SeqCollator(tok, "", 64, 64).lengths(pairs)
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(1)).tolist()
    plain = [perm[i:i + 8] for i in range(0, len(perm), 8)]
    grouped = length_grouped_batches(perm, lengths, 8, torch.Generator().manual_seed(1))
    assert sorted(i for b in grouped for i in b) == list(range(len(pairs)))
    assert len(grouped) == len(plain) and sorted(map(len, grouped)) == sorted(map(len, plain))
    assert padding_fraction(grouped, lengths) < 0.5 * padding_fraction(plain, lengths)
    slots = [len(b) * lengths[b].max(axis=0).sum() for b in grouped]
    assert slots[0] == max(slots)  # the largest batch first: out of memory at step 1, not later
    # a pure function of the order and the generator's seed
    assert grouped == length_grouped_batches(perm, lengths, 8, torch.Generator().manual_seed(1))
    assert grouped != length_grouped_batches(perm, lengths, 8, torch.Generator().manual_seed(2))
    # 300 pairs fit one window of 50 batches: the batches are consecutive runs of it sorted by length
    ranked = sorted(perm, key=lambda i: (lengths[i, 1], lengths[i, 0]), reverse=True)
    assert sorted(grouped) == sorted(ranked[i:i + 8] for i in range(0, len(ranked), 8))


def test_trainer_epochs_cover_every_pair_with_length_grouping(tmp_path, caplog):
    from tests.test_training import make_trainer
    caplog.set_level("INFO", logger="kd")
    trainer, pairs = make_trainer(tmp_path, accum=2, batch_size=5)
    assert trainer.job.optim.group_by_length
    for epoch in (0, 1):
        seen = [p for w in range(trainer.windows_per_epoch) for mb in trainer.window_batches(epoch, w) for p in mb]
        assert sorted(seen) == sorted(pairs)
    assert "length-grouped batches: padding" in caplog.text
    trainer.job.optim.group_by_length = False
    trainer._order = None
    plain = trainer.window_batches(0, 0)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(pairs), generator=g).tolist()
    assert plain == [[pairs[i] for i in perm[:5]], [pairs[i] for i in perm[5:10]]]  # the order of old runs


def _frame_of(collator, text, target):
    """(ids before, ids after) the text's own tokens in a real collated batch."""
    ids = collator([(text, text)])["labels" if target else "input_ids"][0].tolist()
    n = len(collator.tokenizer(text, add_special_tokens=False).input_ids)
    end = max(i for i, t in enumerate(ids) if t not in collator.tokenizer.all_special_ids) + 1
    return ids[:end - n], ids[end:]


@pytest.mark.parametrize("kind", ["trained", "t5", "gpt2"])
def test_random_copy_batches_are_framed_like_real_pairs(pairs_and_tok, request, kind):
    """random_copy_steps: source == target == random non-special tokens, all of one length, with the same
    prefix and special tokens around them that a tokenized real pair gets; a pure function of the generator."""
    if kind == "trained":
        tok = pairs_and_tok[1]
    else:  # T5: SentencePiece, eos added; GPT-2: byte-level BPE, no special tokens (the collator appends eos)
        from transformers import GPT2TokenizerFast, T5TokenizerFast
        cls = T5TokenizerFast if kind == "t5" else GPT2TokenizerFast
        tok = cls.from_pretrained(str(request.getfixturevalue("shared") / "tokenizers" / kind))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    collator = Seq2SeqCollator(tok, "detox: ", 40, 40)
    batch = collator.random_copy_batch(6, 9, torch.Generator().manual_seed(1))
    s_head, s_tail = _frame_of(collator, "one two", target=False)
    t_head, t_tail = _frame_of(collator, "one two", target=True)
    assert batch["input_ids"].shape == (6, len(s_head) + 9 + len(s_tail))
    assert batch["labels"].shape == (6, len(t_head) + 9 + len(t_tail))
    assert bool(batch["attention_mask"].all())  # one length: no padding
    src_core = batch["input_ids"][:, len(s_head):len(s_head) + 9]
    assert torch.equal(src_core, batch["labels"][:, len(t_head):len(t_head) + 9])  # a copy
    assert batch["input_ids"][:, :len(s_head)].tolist() == [s_head] * 6
    assert batch["labels"][:, len(t_head) + 9:].tolist() == [t_tail] * 6
    assert not set(src_core.flatten().tolist()) & set(tok.all_special_ids)
    assert len(set(src_core.flatten().tolist())) > 20  # random, not one token repeated
    again = collator.random_copy_batch(6, 9, torch.Generator().manual_seed(1))
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_random_copy_length_that_does_not_fit_is_a_one_line_error(pairs_and_tok):
    from utils.errors import UserError
    with pytest.raises(UserError, match=r"random_copy_length 40 does not fit data.max_source_length 40 .* lower "):
        Seq2SeqCollator(pairs_and_tok[1], "", 40, 40).random_copy_batch(2, 40, torch.Generator())
