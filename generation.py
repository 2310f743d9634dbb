"""Batched generation with one set of decoding settings for every model compared."""
from __future__ import annotations

import dataclasses

import torch
from transformers import GenerationConfig

from settings import BenchmarkConfig
from data_loader import Seq2SeqCollator


def generation_config(cfg: BenchmarkConfig, model, tokenizer) -> GenerationConfig:
    """A complete GenerationConfig built from the benchmark settings, for ``model``.

    Every decoding choice is set explicitly, so nothing leaks in from a checkpoint's own
    generation_config (bart-large-cnn ships min_length=56 and no_repeat_ngram_size=3, which
    would decode the teacher differently from the student). Only the token ids the model needs
    to decode correctly come from the model (decoder start, forced BOS/EOS)."""
    mc = model.generation_config
    kwargs = dict(num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens, do_sample=False, min_length=0,
                  repetition_penalty=1.0,
                  no_repeat_ngram_size=cfg.no_repeat_ngram_size, encoder_no_repeat_ngram_size=0,
                  decoder_start_token_id=model.config.decoder_start_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  forced_bos_token_id=mc.forced_bos_token_id, forced_eos_token_id=mc.forced_eos_token_id)
    if cfg.num_beams > 1:  # beam-only flags: transformers 5 refuses to save them on a greedy config
        kwargs.update(length_penalty=cfg.length_penalty, early_stopping=True)
    bad = bad_words_ids(cfg.bad_phrases, tokenizer)
    if bad:
        kwargs["bad_words_ids"] = bad
    rows = model.get_output_embeddings().weight.shape[0]
    if rows > len(tokenizer):  # T5: ids 32100..32127 are padding rows no tokenizer id maps to
        kwargs["suppress_tokens"] = list(range(len(tokenizer), rows))
    return GenerationConfig(**kwargs)


def sampling_config(on_policy, max_new_tokens: int, bench: BenchmarkConfig, model, tokenizer) -> GenerationConfig:
    """The student's sampling for on-policy batches (``distill.on_policy``): one sample per source from
    its own distribution, shaped only by temperature, top-p and top-k (no beams, no n-gram or phrase
    blocking: where the student would write a blocked phrase, the teacher's scores should correct it)."""
    gen = generation_config(dataclasses.replace(bench, num_beams=1, no_repeat_ngram_size=0, bad_phrases=[],
                                                max_new_tokens=max_new_tokens), model, tokenizer)
    gen.update(do_sample=True, temperature=on_policy.temperature, top_p=on_policy.top_p, top_k=on_policy.top_k)
    return gen


def bad_words_ids(phrases: list[str], tokenizer) -> list[list[int]]:
    """Token id sequences that block each phrase in its common case and spacing variants.

    Case: as written, lower, UPPER, Title Case and Capitalized first word ("shut up", "SHUT UP",
    "Shut Up", "Shut up"). Spacing: the phrase after a space (SentencePiece "▁shut", GPT-2
    "Ġshut": how a word is tokenized mid-sentence) and glued to what precedes it (no marker:
    "(shut", a sentence start for GPT-2). Each variant is tokenized once, as a tokenizer would
    inside a text, so the same id sequence appears when a model generates it."""
    out = []
    for phrase in dict.fromkeys(p.strip() for p in phrases if p.strip()):
        for text in case_variants(phrase):
            for ids in _spacing_variants(text, tokenizer):
                if ids and ids not in out:
                    out.append(ids)
    return out


def case_variants(phrase: str) -> list[str]:
    """The phrase as written, lower, UPPER, Title Case and Capitalized first word, deduplicated."""
    low = phrase.lower()
    return list(dict.fromkeys([phrase, low, phrase.upper(), " ".join(w[:1].upper() + w[1:] for w in low.split()),
                               low[:1].upper() + low[1:]]))


def _spacing_variants(text: str, tokenizer) -> list[list[int]]:
    """Ids of ``text`` after a space and glued to the previous text (fast tokenizers), else
    the tokenizer's own encodings of "text" and " text"."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return [tokenizer(t, add_special_tokens=False).input_ids for t in (text, " " + text)]
    normalized = backend.normalizer.normalize_str(" " + text) if backend.normalizer else " " + text
    pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
    spaced = [p for p in pieces if p]
    glued = [spaced[0].lstrip(" ▁Ġ")] + spaced[1:]  # the first word without its space marker
    return [_piece_ids(backend, ps) for ps in (spaced, glued if glued[0] else spaced)]


def _piece_ids(backend, pieces: list[str]) -> list[int]:
    return [t.id for piece in pieces for t in backend.model.tokenize(piece)]


@torch.no_grad()
def generate_texts(model, tokenizer, sources: list[str], *, prefix: str, max_source_length: int,
                   gen_config: GenerationConfig, batch_size: int, device, precision) -> tuple[list[str], int]:
    """Decode ``sources`` in batches sorted by length (less padding), returned in input order.
    Inputs are encoded exactly as in training (the collator's ``encode_sources``).

    Returns the texts and the number of generated tokens (excluding padding)."""
    model.eval()
    collator = Seq2SeqCollator(tokenizer, prefix, max_source_length, max_target_length=max_source_length)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    texts: list[str] = [""] * len(sources)
    n_tokens = 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = {k: v.to(device) for k, v in collator.encode_sources([sources[i] for i in idx]).items()}
        with precision.autocast():
            out = model.generate(**enc, generation_config=gen_config)
        generated = out[:, 1:]  # position 0 is the decoder start token
        n_tokens += int((generated != tokenizer.pad_token_id).sum())
        for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
            texts[i] = text.strip()
    return texts, n_tokens
