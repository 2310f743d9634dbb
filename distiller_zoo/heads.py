"""A seq2seq model split at its LM head: decoder states without logits, and the head itself.

The fused objective computes logits chunk by chunk from the decoder's final hidden states,
so neither model ever holds its full ``[B, T, V]`` logits. Both functions reproduce exactly
what ``model(...)`` does in transformers 5:

- T5: ``sequence_output * d_model**-0.5`` before ``lm_head`` when ``config.scale_decoder_outputs``
  (set from ``tie_word_embeddings``: tied embeddings are rescaled);
- BART and its relatives: ``lm_head(h) + final_logits_bias``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import Seq2SeqLMOutput


@dataclass
class LMHead:
    """``logits = hidden @ weight.T + bias`` over the first ``V`` vocabulary rows (padded rows cut off)."""

    weight: torch.Tensor            # [V, d]
    bias: torch.Tensor | None       # [V] or None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight, self.bias)

    def into(self, hidden: torch.Tensor, scratch: "Scratch", key="logits") -> torch.Tensor:
        """``self(hidden)`` written into ``scratch``'s buffer ``key``; under autocast, or with another dtype
        than the weight's, a new tensor as ``F.linear`` makes it."""
        w, b = self.weight, self.bias
        if torch.is_autocast_enabled(hidden.device.type) or hidden.dtype != w.dtype:
            return self(hidden)
        out = scratch(key, hidden.shape[0], w.shape[0], hidden)
        return torch.mm(hidden, w.t(), out=out) if b is None else torch.addmm(b, hidden, w.t(), out=out)


class Scratch:
    """``[n, V]`` buffers by key, reused from chunk to chunk (the first chunk is the largest): on CPU a
    fresh [256, 32,128] tensor is a page-faulting ``mmap`` each time, ~20% of a chunk's cost."""

    def __init__(self):
        self.buffers: dict = {}

    def __call__(self, key, n: int, v: int, like: torch.Tensor) -> torch.Tensor:
        if key not in self.buffers or self.buffers[key].shape[0] < n:
            self.buffers[key] = torch.empty(n, v, dtype=like.dtype, device=like.device)
        return self.buffers[key][:n]


def lm_head(model, vocab_size: int | None = None) -> LMHead:
    """The model's output layer restricted to ``vocab_size`` rows (the tokenizer's length)."""
    weight = model.get_output_embeddings().weight
    v = min(weight.shape[0], vocab_size or weight.shape[0])
    bias = getattr(model, "final_logits_bias", None)
    return LMHead(weight[:v], None if bias is None else bias[0, :v])


def decoder_states(model, batch: dict, need: frozenset = frozenset()):
    """Run ``model`` on a collated batch without its LM head.

    Returns ``(outputs, hidden)``: a ``Seq2SeqLMOutput`` with ``logits=None`` but the hidden
    states / attentions that ``need`` asks for (feature and attention losses read them), and
    the decoder's final states ``[B, T, d]`` exactly as the model feeds them to ``lm_head``."""
    dec_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    flags = dict(output_hidden_states="hidden_states" in need, output_attentions="attentions" in need,
                 use_cache=False)
    if hasattr(model, "final_logits_bias"):       # BART family: the base model returns the decoder states
        o = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=dec_ids, **flags)
        hidden = o.last_hidden_state
        enc_last, enc_states, enc_attn = o.encoder_last_hidden_state, o.encoder_hidden_states, o.encoder_attentions
        dec_states, dec_attn, cross = o.decoder_hidden_states, o.decoder_attentions, o.cross_attentions
    elif hasattr(model, "encoder") and hasattr(model, "decoder"):   # T5 family
        enc = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=flags["output_hidden_states"],
                            output_attentions=flags["output_attentions"])
        dec = model.decoder(input_ids=dec_ids, encoder_hidden_states=enc.last_hidden_state,
                            encoder_attention_mask=batch["attention_mask"], **flags)
        hidden = dec.last_hidden_state
        if getattr(model.config, "scale_decoder_outputs", False):
            hidden = hidden * (model.model_dim ** -0.5)
        enc_last, enc_states, enc_attn = enc.last_hidden_state, enc.hidden_states, enc.attentions
        dec_states, dec_attn, cross = dec.hidden_states, dec.attentions, dec.cross_attentions
    else:
        raise TypeError(f"{type(model).__name__} is neither a BART- nor a T5-style seq2seq model; "
                        f"set distill.chunk_size 0 to use its full logits")
    out = Seq2SeqLMOutput(logits=None, decoder_hidden_states=dec_states, decoder_attentions=dec_attn,
                          cross_attentions=cross, encoder_last_hidden_state=enc_last,
                          encoder_hidden_states=enc_states, encoder_attentions=enc_attn)
    return out, hidden
