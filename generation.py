"""Batched generation with one set of decoding settings for every model compared."""
from __future__ import annotations

import torch

from config import BenchmarkConfig


def decoding_kwargs(cfg: BenchmarkConfig, tokenizer) -> dict:
    """``model.generate`` keyword arguments from the benchmark config.

    Recorded in the report so that every model is known to have been decoded the same way."""
    kwargs = dict(num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                  length_penalty=cfg.length_penalty, early_stopping=cfg.num_beams > 1)
    if cfg.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size
    bad = bad_words_ids(cfg.bad_phrases, tokenizer)
    if bad:
        kwargs["bad_words_ids"] = bad
    return kwargs


def bad_words_ids(phrases: list[str], tokenizer) -> list[list[int]]:
    """Token id sequences for each blocked phrase, with and without a leading space.

    SentencePiece and byte-level BPE tokenize a word differently at the start of a text and
    after a space; blocking both forms stops the phrase wherever it would appear."""
    out = []
    for phrase in phrases:
        for text in (phrase, " " + phrase):
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if ids and ids not in out:
                out.append(ids)
    return out


@torch.no_grad()
def generate_texts(model, tokenizer, sources: list[str], *, prefix: str, max_source_length: int,
                   gen_kwargs: dict, batch_size: int, device, precision) -> tuple[list[str], int]:
    """Decode ``sources`` in batches sorted by length (less padding), returned in input order.

    Returns the texts and the number of generated tokens (excluding padding)."""
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    texts: list[str] = [""] * len(sources)
    n_tokens = 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prefix + sources[i] for i in idx], padding="longest", truncation=True,
                        max_length=max_source_length, return_tensors="pt").to(device)
        with precision.autocast():
            out = model.generate(**enc, **gen_kwargs)
        n_tokens += int((out != tokenizer.pad_token_id).sum()) - out.shape[0]  # minus the start token
        for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
            texts[i] = text.strip()
    return texts, n_tokens
