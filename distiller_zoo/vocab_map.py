"""Teacher -> student token ids by normalized token strings: the shared sub-vocabulary.

Two tokenizers spell the same text differently. A token's *text* is what it stands for once its
tokenizer's conventions are undone:

- SentencePiece marks a word start with ``▁`` (U+2581), byte-level BPE (GPT-2, RoBERTa, BART)
  with ``Ġ`` after mapping every byte to a printable character; both become a plain space, so
  ``▁hello`` (T5) and ``Ġhello`` (GPT-2) are both ``" hello"``;
- byte-level tokens are turned back into their bytes, SentencePiece byte-fallback tokens
  ``<0xE2>`` into that byte; bytes that are valid UTF-8 become text (``Ã©`` -> ``é``, ``<0x0A>``
  and ``Ċ`` -> ``"\\n"``), the others stay bytes and match only the same bytes;
- when the student's tokenizer lowercases its input, texts are compared lowercased.

Each teacher id whose text is also a student token's text maps to that student id; several
teacher ids may land on one student id (their probabilities add up). The end-of-sequence tokens
map to each other; other special tokens map to nothing. Computed once per tokenizer pair and
kept for the process (:func:`vocab_map`).
"""
from __future__ import annotations

import hashlib
import json
import re
import weakref
from dataclasses import dataclass
from functools import lru_cache

import torch

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte table (the inverse of ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer's decoder is byte-level BPE (tokens are byte strings in GPT-2's alphabet)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)


_TEXTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def token_texts(tokenizer) -> list[str | bytes | None]:
    """The text each id stands for (``str``, or ``bytes`` when not valid UTF-8); None for special tokens.
    Computed once per tokenizer object."""
    if tokenizer not in _TEXTS:
        _TEXTS[tokenizer] = _token_texts(tokenizer)
    return _TEXTS[tokenizer]


def _token_texts(tokenizer) -> list[str | bytes | None]:
    byte_level, table = is_byte_level(tokenizer), _byte_decoder()
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    out: list[str | bytes | None] = []
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            out.append(None)
            continue
        if byte_level and all(c in table for c in piece):
            raw = bytes(table[c] for c in piece)
        elif (m := _BYTE_FALLBACK.match(piece)) is not None:
            raw = bytes([int(m[1], 16)])
        else:
            out.append(piece.replace("▁", " "))
            continue
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(raw)
    return out


def lowercases(tokenizer) -> bool:
    """Whether the tokenizer folds case (then teacher texts are matched lowercased)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = None if backend is None else backend.normalizer
    return normalizer is not None and normalizer.normalize_str("AÉ") == "aé"


@dataclass
class VocabMap:
    """Teacher ids ``teacher_ids [M]`` map to columns ``columns [M]`` of the shared sub-vocabulary,
    whose student ids are ``student_ids [S]`` (``S <= M``: several teacher ids may share a column)."""

    teacher_ids: torch.Tensor
    columns: torch.Tensor
    student_ids: torch.Tensor
    teacher_size: int
    student_size: int

    def to(self, device) -> "VocabMap":
        return VocabMap(self.teacher_ids.to(device), self.columns.to(device), self.student_ids.to(device),
                        self.teacher_size, self.student_size)

    def describe(self) -> str:
        s, m = len(self.student_ids), len(self.teacher_ids)
        return (f"{s:,} of {self.student_size:,} student tokens ({100 * s / self.student_size:.1f}%) are shared, "
                f"covered by {m:,} of {self.teacher_size:,} teacher tokens ({100 * m / self.teacher_size:.1f}%)")


def build_vocab_map(teacher_tok, student_tok) -> VocabMap:
    """The map from the two tokenizers (uncached; use :func:`vocab_map`)."""
    fold = lowercases(student_tok)
    key = (lambda t: t.lower() if fold and isinstance(t, str) else t)
    student_of: dict = {}
    for sid, text in enumerate(token_texts(student_tok)):
        if text is not None and text != "":
            student_of.setdefault(key(text), sid)       # the lowest id wins a duplicated text
    pairs = [(tid, student_of[key(t)]) for tid, t in enumerate(token_texts(teacher_tok))
             if t is not None and t != "" and key(t) in student_of]
    if teacher_tok.eos_token_id is not None and student_tok.eos_token_id is not None:
        pairs.append((teacher_tok.eos_token_id, student_tok.eos_token_id))
    if not pairs:
        raise ValueError("the teacher's and the student's vocabularies share no token")
    student_ids = sorted({s for _, s in pairs})
    column = {s: c for c, s in enumerate(student_ids)}
    return VocabMap(torch.tensor([t for t, _ in pairs]), torch.tensor([column[s] for _, s in pairs]),
                    torch.tensor(student_ids), len(teacher_tok), len(student_tok))


def _fingerprint(tok) -> str:
    h = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(repr((type(tok).__name__, tok.eos_token_id, sorted(tok.all_special_ids))).encode())
    return h.hexdigest()


_MAPS: dict[tuple[str, str], VocabMap] = {}


def vocab_map(teacher_tok, student_tok) -> VocabMap:
    """:func:`build_vocab_map`, computed once per tokenizer pair in a process."""
    k = (_fingerprint(teacher_tok), _fingerprint(student_tok))
    if k not in _MAPS:
        _MAPS[k] = build_vocab_map(teacher_tok, student_tok)
    return _MAPS[k]
