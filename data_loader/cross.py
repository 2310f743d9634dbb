"""Batches for a teacher with another tokenizer: the student's batch plus the teacher's view of it.

:class:`CrossTokenizerCollator` wraps the student's :class:`Seq2SeqCollator` (whose batch it
leaves exactly as it is) and adds, per pair, the teacher's tokens and the alignment:

- ``teacher_input_ids`` / ``teacher_attention_mask`` ``[B, L]``: for a causal teacher the prompt
  (``prompt_template`` filled with the prefix and the source) followed by the target and the
  teacher's end-of-sequence token; for a seq2seq teacher its own tokenization of the source;
- ``teacher_labels`` ``[B, Tt]`` (seq2seq teacher only): its tokenization of the target;
- ``teacher_index`` ``[B, T]`` (T = the student's label length): for each student target
  position, the teacher position whose next-token distribution is its signal, or -1
  (:mod:`distiller_zoo.alignment`). Causal: the position *before* the aligned teacher token;
  seq2seq: the decoder position of the aligned label.

Right padding everywhere: a causal model's real tokens never attend to padding on their right,
and positions are counted from the left, so padded rows give the same numbers as unpadded ones.
Each pair is tokenized and aligned once per run.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from data_loader.batching import Seq2SeqCollator
from distiller_zoo.alignment import align, token_starts
from distiller_zoo.base import IGNORE_INDEX
from distiller_zoo.vocab_map import token_texts


class _Side:
    """One tokenizer's plain tokenization of target texts: ids, offsets and blank tokens."""

    def __init__(self, tokenizer, shift: int = 0):
        self.tok, self.shift = tokenizer, shift
        self.blank = [isinstance(t, str) and t.strip() == "" for t in token_texts(tokenizer)]

    def starts(self, text: str, ids) -> list[int | None]:
        enc = self.tok(" " * self.shift + text, add_special_tokens=False, return_offsets_mapping=True)
        return token_starts(ids, text, enc["offset_mapping"], enc["input_ids"], self.blank, self.tok.eos_token_id,
                            self.shift)


class CrossTokenizerCollator:
    """The student's collator plus the teacher's tokens and ``teacher_index`` (see the module doc)."""

    def __init__(self, student: Seq2SeqCollator, teacher_tokenizer, causal: bool, prompt_template: str):
        self.student, self.causal, self.template = student, causal, prompt_template
        tt = teacher_tokenizer
        if tt.pad_token_id is None or tt.eos_token_id is None:
            raise ValueError("the teacher's tokenizer needs a pad and an end-of-sequence token")
        # A causal teacher reads the target after the prompt's newline: give it the word-start
        # marker its tokenizer would give inside running text (GPT-2 needs a space; SentencePiece
        # adds its own), so its first target token is " word", as the student's "▁word".
        first = token_texts(tt)[tt("a", add_special_tokens=False).input_ids[0]]
        shift = 1 if causal and isinstance(first, str) and not first.startswith(" ") else 0
        self.teacher_tok = tt
        self.teacher = Seq2SeqCollator(tt, student.prefix, student.max_source_length, student.max_target_length)
        self.sides = (_Side(student.tokenizer), _Side(tt, shift))
        self._rows: dict[tuple[str, str], tuple] = {}

    def __getattr__(self, name):   # prefix, max lengths, encode, lengths, tokenizer: the student's
        return getattr(self.student, name)

    def teacher_row(self, pair: tuple[str, str], s_ids: list[int] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(teacher input ids, teacher labels or None, teacher index per student target token);
        cached per pair, unless the student's target ids ``s_ids`` are given (a sample)."""
        if s_ids is not None or pair not in self._rows:
            source, target = pair
            cached = s_ids is None
            s_ids = self.student.encode([pair])[0][1].tolist() if cached else s_ids
            student_side, teacher_side = self.sides
            if self.causal:
                tt = self.teacher_tok
                prompt = tt(fill_template(self.template, prefix=self.student.prefix, source=source),
                            truncation=True, max_length=self.student.max_source_length).input_ids
                body = tt(" " * teacher_side.shift + target, add_special_tokens=False, truncation=True,
                          max_length=self.student.max_target_length - 1).input_ids
                t_ids = body + [tt.eos_token_id]
                inputs, labels, offset = prompt + t_ids, None, len(prompt) - 1   # state k predicts token k + 1
            else:
                src, t_ids = (x.tolist() for x in self.teacher.encode([pair])[0])
                inputs, labels, offset = src, t_ids, 0                           # decoder state k predicts label k
            pairs = align(student_side.starts(target, s_ids), teacher_side.starts(target, t_ids))
            index = [-1 if j is None or j + offset < 0 else j + offset for j in pairs]
            row = (np.asarray(inputs, dtype=np.int32), None if labels is None else
                   np.asarray(labels, dtype=np.int32), np.asarray(index, dtype=np.int32))
            if not cached:
                return row
            self._rows[pair] = row
        return self._rows[pair]

    def __call__(self, pairs: list[tuple[str, str]]) -> dict:
        return self._with_teacher(self.student(pairs), [self.teacher_row(p) for p in pairs])

    def sampled_batch(self, sources: list[str], targets: list[list[int]]) -> dict:
        """The student's samples as its labels (exactly those tokens); the teacher reads them as text,
        tokenized its own way and aligned by characters like any target."""
        texts = self.student.tokenizer.batch_decode(targets, skip_special_tokens=True)
        rows = [self.teacher_row((s, t), ids) for s, t, ids in zip(sources, texts, targets)]
        return self._with_teacher(self.student.sampled_batch(sources, targets), rows)

    def _with_teacher(self, batch: dict, rows: list) -> dict:
        pad = self.teacher_tok.pad_token_id
        batch["teacher_input_ids"], batch["teacher_attention_mask"] = _pad([r[0] for r in rows], pad, mask=True)
        if not self.causal:
            batch["teacher_labels"] = _pad([r[1] for r in rows], IGNORE_INDEX)
        index = torch.full(batch["labels"].shape, -1, dtype=torch.long)
        for i, (_, _, idx) in enumerate(rows):
            index[i, :len(idx)] = torch.from_numpy(idx)
        batch["teacher_index"] = index
        return batch

    def aligned_fraction(self, pairs: list[tuple[str, str]]) -> float:
        """Share of the student target positions of ``pairs`` that receive a teacher signal."""
        index = np.concatenate([self.teacher_row(p)[2] for p in dict.fromkeys(pairs)])
        return float((index >= 0).mean()) if index.size else 0.0


def fill_template(template: str, **values: str) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]`` and ``{{``/``}}`` by a brace, in one
    pass. Plain substitution, not ``str.format``: a template is data, and nothing in it is evaluated
    (``{source.__class__}`` stays as written, should one ever slip past the config's validation)."""
    names = "|".join(map(re.escape, values))
    return re.sub(r"\{\{|\}\}|\{(" + names + r")\}",
                  lambda m: values[m.group(1)] if m.group(1) else m.group()[0], template)


def _pad(rows, value: int, mask: bool = False):
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    att = torch.zeros_like(out)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.from_numpy(r.astype(np.int64))
        att[i, :len(r)] = 1
    return (out, att) if mask else out
