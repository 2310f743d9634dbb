"""Batches: tokenize each (source, target) pair once per run, pad micro-batches, group them by length."""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from distiller_zoo.base import IGNORE_INDEX
from utils.errors import UserError


class Seq2SeqCollator:
    """Tokenize (source, target) pairs into a padded batch for an encoder-decoder model.

    Each pair is tokenized once per run: :meth:`encode` keeps the ids (int32 arrays) of every pair
    it has seen, so later epochs and validation only pad. Padding is dynamic (to the longest in
    the batch) rather than to max_length, which saves most of the compute on short inputs. Label
    padding is IGNORE_INDEX (-100) so the loss ignores it; the positions come from the lengths, not from
    ``== pad_token_id``, because some tokenizers use the same id for padding and for a real
    end-of-sequence token."""

    def __init__(self, tokenizer, prefix: str, max_source_length: int, max_target_length: int):
        if tokenizer.pad_token_id is None:
            raise UserError("tokenizer has no pad token; give it one (e.g. pad_token='<pad>') before training")
        self.tokenizer = tokenizer
        self.prefix = prefix or ""
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        # GPT-2-style tokenizers add no end-of-sequence token; without one a seq2seq model never
        # learns to stop, so targets get it appended here.
        probe = tokenizer(text_target="a").input_ids
        self.append_eos = tokenizer.eos_token_id is not None and (not probe or probe[-1] != tokenizer.eos_token_id)
        self._ids: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def encode_sources(self, sources: list[str]) -> dict:
        """Inputs only (prefix applied), padded, e.g. for ``model.generate``."""
        enc = self.tokenizer([self.prefix + s for s in sources], padding="longest", truncation=True,
                             max_length=self.max_source_length, return_tensors="pt", return_attention_mask=True,
                             return_token_type_ids=False, padding_side="right")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode(self, pairs: list[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(source ids, target ids) of each pair, truncated; pairs not seen before are tokenized in one call."""
        new = [p for p in dict.fromkeys(pairs) if p not in self._ids]
        if new:
            src = self.tokenizer([self.prefix + s for s, _ in new], truncation=True,
                                 max_length=self.max_source_length).input_ids
            if self.append_eos:
                eos = self.tokenizer.eos_token_id
                tgt = [x + [eos] for x in self.tokenizer(text_target=[t for _, t in new], truncation=True,
                                                          max_length=self.max_target_length - 1).input_ids]
            else:
                tgt = self.tokenizer(text_target=[t for _, t in new], truncation=True,
                                     max_length=self.max_target_length).input_ids
            for pair, s, t in zip(new, src, tgt):
                self._ids[pair] = (np.asarray(s, dtype=np.int32), np.asarray(t, dtype=np.int32))
        return [self._ids[p] for p in pairs]

    def lengths(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """``[n, 2]`` token counts (source, target) of each pair."""
        return np.array([(len(s), len(t)) for s, t in self.encode(pairs)], dtype=np.int64).reshape(-1, 2)

    def random_copy_batch(self, n: int, length: int, generator: torch.Generator) -> dict:
        """``n`` copies of ``length`` random non-special tokens each (training.*.random_copy_steps): the
        source framed as a tokenized source (prefix and special tokens), the target as a target; all
        of one length, so no padding."""
        plain, (s_head, s_tail), (t_head, t_tail) = self._copy_parts
        if len(s_head) + length + len(s_tail) > self.max_source_length or \
                len(t_head) + length + len(t_tail) > self.max_target_length:
            raise UserError(f"random_copy_length {length} does not fit data.max_source_length "
                            f"{self.max_source_length} / max_target_length {self.max_target_length} with the prefix "
                            f"and special tokens; lower random_copy_length")
        core = plain[torch.randint(len(plain), (n, length), generator=generator)]

        def framed(head, tail):
            return torch.cat([torch.tensor(head, dtype=torch.long).expand(n, -1), core,
                              torch.tensor(tail, dtype=torch.long).expand(n, -1)], dim=1)
        input_ids = framed(s_head, s_tail)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "labels": framed(t_head, t_tail)}

    @cached_property
    def _copy_parts(self):
        """random_copy_batch's vocabulary (the non-special ids) and the source's and target's frames."""
        special = set(self.tokenizer.all_special_ids)
        plain = torch.tensor([i for i in range(len(self.tokenizer)) if i not in special])
        return plain, self._frame(target=False), self._frame(target=True)

    def _frame(self, target: bool) -> tuple[list[int], list[int]]:
        """The ids this collator puts before and after a source's / target's text: the tokenizer's
        special tokens around a probe text, the prefix (a word's tokens carry their own space), the
        appended end of sequence."""
        core = self.tokenizer("a", add_special_tokens=False).input_ids
        full = self.tokenizer(text_target="a").input_ids if target else self.tokenizer("a").input_ids
        at = next(i for i in range(len(full) - len(core) + 1) if full[i:i + len(core)] == core)
        head, tail = full[:at], full[at + len(core):]
        if target and self.append_eos:
            tail = tail + [self.tokenizer.eos_token_id]
        if not target and self.prefix:
            head = head + self.tokenizer(self.prefix.rstrip(), add_special_tokens=False).input_ids
        return head, tail

    def __call__(self, pairs: list[tuple[str, str]]) -> dict:
        if not pairs:
            raise ValueError("Seq2SeqCollator: empty batch")
        return self._padded(self.encode(pairs))

    def sampled_batch(self, sources: list[str], targets: list[list[int]]) -> dict:
        """``sources`` with given target ids as labels (a model's own samples: exactly those tokens,
        not re-tokenized; not cached, since each sample is new)."""
        src = self.tokenizer([self.prefix + s for s in sources], truncation=True,
                             max_length=self.max_source_length).input_ids
        return self._padded([(np.asarray(s, dtype=np.int32), np.asarray(t, dtype=np.int32))
                             for s, t in zip(src, targets)])

    def _padded(self, encoded: list[tuple[np.ndarray, np.ndarray]]) -> dict:
        n, src_len, tgt_len = len(encoded), max(len(s) for s, _ in encoded), max(len(t) for _, t in encoded)
        input_ids = torch.full((n, src_len), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, src_len), dtype=torch.long)
        labels = torch.full((n, tgt_len), IGNORE_INDEX, dtype=torch.long)
        for i, (s, t) in enumerate(encoded):
            input_ids[i, :len(s)] = torch.from_numpy(s)
            attention_mask[i, :len(s)] = 1
            labels[i, :len(t)] = torch.from_numpy(t)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def length_grouped_batches(order: list[int], lengths: np.ndarray, batch_size: int,
                           generator: torch.Generator) -> list[list[int]]:
    """Cut a shuffled ``order`` into micro-batches of similar length, to cut padding.

    Like transformers' ``LengthGroupedSampler``: windows of 50 batches of ``order`` are each sorted
    by (target, source) length and cut into batches; then the batches are shuffled with
    ``generator`` and the one with the most token slots goes first, so a batch that does not fit in
    memory fails at the first step, not hours later. The result is a pure function of ``order``,
    ``lengths`` and the generator's state: data order stays a function of (seed, epoch)."""
    mega = 50 * batch_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: (lengths[i, 1], lengths[i, 0]), reverse=True)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    slots = [len(b) * int(lengths[b].max(axis=0).sum()) for b in batches]
    first = int(np.argmax(slots))
    batches[0], batches[first] = batches[first], batches[0]
    return batches


def padding_fraction(batches: list[list[int]], lengths: np.ndarray) -> float:
    """Share of the padded (source + target) token slots of ``batches`` that hold padding."""
    slots = sum(len(b) * int(lengths[b].max(axis=0).sum()) for b in batches)
    return 1.0 - int(lengths.sum()) / max(slots, 1)
