"""Batched generation with one set of decoding settings for every model compared."""
from __future__ import annotations

import torch
from transformers import GenerationConfig

from config import BenchmarkConfig


def generation_config(cfg: BenchmarkConfig, model, tokenizer) -> GenerationConfig:
    """A complete GenerationConfig built from the benchmark settings, for ``model``.

    Every decoding choice is set explicitly, so nothing leaks in from a checkpoint's own
    generation_config (bart-large-cnn ships min_length=56 and no_repeat_ngram_size=3, which
    would decode the teacher differently from the student). Only the token ids the model needs
    to decode correctly come from the model (decoder start, forced BOS/EOS)."""
    mc = model.generation_config
    kwargs = dict(num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens, do_sample=False, min_length=0,
                  length_penalty=cfg.length_penalty, early_stopping=cfg.num_beams > 1, repetition_penalty=1.0,
                  no_repeat_ngram_size=cfg.no_repeat_ngram_size, encoder_no_repeat_ngram_size=0,
                  decoder_start_token_id=model.config.decoder_start_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  forced_bos_token_id=mc.forced_bos_token_id, forced_eos_token_id=mc.forced_eos_token_id)
    bad = bad_words_ids(cfg.bad_phrases, tokenizer)
    if bad:
        kwargs["bad_words_ids"] = bad
    rows = model.get_output_embeddings().weight.shape[0]
    if rows > len(tokenizer):  # T5: ids 32100..32127 are padding rows no tokenizer id maps to
        kwargs["suppress_tokens"] = list(range(len(tokenizer), rows))
    return GenerationConfig(**kwargs)


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
                   gen_config: GenerationConfig, batch_size: int, device, precision) -> tuple[list[str], int]:
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
            out = model.generate(**enc, generation_config=gen_config)
        generated = out[:, 1:]  # position 0 is the decoder start token
        n_tokens += int((generated != tokenizer.pad_token_id).sum())
        for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
            texts[i] = text.strip()
    return texts, n_tokens
