"""Tokenizers and models: from the hub, from a local directory, or built from scratch.

Hub access is guarded: a name that is neither a local directory nor in the local cache is
only requested from the hub after a 3-second reachability probe, so an offline machine gets
one clear line suggesting a local path instead of huggingface_hub's 30-second retry loop.
"""
from __future__ import annotations

import copy
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, BartConfig, BartForConditionalGeneration,
                          BertTokenizerFast, GPT2TokenizerFast, PreTrainedTokenizerFast, T5Config,
                          T5ForConditionalGeneration, T5TokenizerFast)

from settings import ArchConfig, ModelConfig, TokenizerConfig, TokenizerTrainConfig
from utils.errors import one_line, UserError
from utils.hub import hub_offline, hub_reachable
from utils.logs import log

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]  # ids 0..3 in trained tokenizers


# --------------------------------------------------------------------------- hub access
def from_hub(loader, name: str, what: str, **kwargs):
    """Call ``loader(name, ...)``: local directory or cache first, the hub only if reachable."""
    if Path(name).exists():
        return load_local(loader, name, what, **kwargs)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"{what} {name!r}: no such directory (give an existing local path or a hub id)")
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError:
        pass
    except ValueError as e:  # cached, but not a model this tool can load
        raise UserError(load_failure(what, name, e)) from None
    if hub_offline() or not hub_reachable():
        raise UserError(f"{what} {name!r} is not cached and the model hub cannot be reached (offline); "
                        f"download it on a connected machine and give its local directory instead")
    try:
        return loader(name, **kwargs)
    except OSError as e:
        raise UserError(f"{what} {name!r} could not be loaded from the hub ({str(e).splitlines()[0]}); "
                        f"check the name or give a local directory") from None


def load_local(loader, path, what: str, **kwargs):
    """``loader(path)`` with transformers' errors for a broken or foreign directory as one line."""
    from safetensors import SafetensorError
    try:
        return loader(str(path), **kwargs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as e:  # damaged or foreign files
        raise UserError(load_failure(what, path, e)) from None


SUPPORTED_KINDS = "T5 family (t5, mt5, umt5) or BART family (bart, mbart, pegasus, marian)"


def load_failure(what: str, name, error: Exception) -> str:
    """One line for a model that does not load: its unsupported kind when that is the cause, not
    transformers' list of every model class (cut off mid-list on one line)."""
    kind = _model_type(name)
    if kind is not None and kind not in _LAYER_ATTRS:
        return (f"{what} {name}: cannot load a seq2seq model from it: its model type is {kind!r}, and this tool "
                f"distills encoder-decoder models of the {SUPPORTED_KINDS}; give such a model (a causal LM such "
                f"as Llama or GPT-2 can be the teacher: teacher.kind causal)")
    first = " ".join(str(error).split("Model type should be one of")[0].split())[:200] or type(error).__name__
    return (f"{what} {name}: cannot load a seq2seq model or tokenizer from it ({first}); give a directory written "
            f"by save_pretrained for a model of the {SUPPORTED_KINDS}")


def is_causal_lm(name, kind: str = "auto") -> bool:
    """Whether ``name`` is loaded as a decoder-only LM: ``kind`` 'causal', or 'auto' and its config.json
    (local or cached) describes a model that is not an encoder-decoder but has a causal-LM class."""
    if kind != "auto":
        return kind == "causal"
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    try:
        config = AutoConfig.from_pretrained(str(name), local_files_only=True)
    except Exception:  # noqa: BLE001 - unreadable: the seq2seq loader reports it
        return False
    return not getattr(config, "is_encoder_decoder", False) and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _model_type(name) -> str | None:
    """``model_type`` from a directory's (or the hub cache's) config.json; None if unreadable."""
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(str(name), local_files_only=True).model_type
    except Exception:  # noqa: BLE001 - any failure just means "unknown kind"
        return None


# --------------------------------------------------------------------------- tokenizers
def load_tokenizer(cfg: TokenizerConfig, model_path: str | None, train_texts=None):
    """The tokenizer a model config asks for, with a pad and an eos token guaranteed."""
    if cfg.train:
        if train_texts is None:
            raise UserError("tokenizer.train needs the training data; configure data.* as well")
        tok = train_tokenizer(train_texts, cfg.train)
    elif cfg.path:
        tok = tokenizer_from_path(cfg.path, cfg.extra_ids)
    elif model_path:
        tok = from_hub(AutoTokenizer.from_pretrained, model_path, "tokenizer")
    else:
        raise UserError("tokenizer: set tokenizer.path or tokenizer.train (or name_or_path for a pretrained model)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # GPT-2 style tokenizers ship without padding
    if tok.eos_token is None:
        raise UserError(f"tokenizer {cfg.path or model_path}: it has no end-of-sequence token; "
                        f"a seq2seq model needs one (use a T5/BART tokenizer or tokenizer.train)")
    return tok


def tokenizer_from_path(path: str, extra_ids: int | None = None):
    """Load a tokenizer from a directory or a single file, recognising its kind by its files."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"tokenizer.path {path}: no such file or directory (point it at a tokenizer "
                        f"directory, tokenizer.json or spiece.model)")
    kwargs = {} if extra_ids is None else {"extra_ids": extra_ids}
    if p.is_file() and p.suffix == ".model":
        if p.name == "spiece.model":
            return T5TokenizerFast.from_pretrained(str(p.parent), **kwargs)
        with tempfile.TemporaryDirectory() as tmp:  # T5TokenizerFast finds its model by name only
            (Path(tmp) / "spiece.model").symlink_to(p.resolve())
            return T5TokenizerFast.from_pretrained(tmp, **kwargs)
    if p.is_file() and p.name.endswith(".json"):
        return _wrap_tokenizer_json(p)
    if p.is_file():
        raise UserError(f"tokenizer.path {path}: unknown tokenizer file (expected tokenizer.json, "
                        f"*.model or a directory)")
    files = {f.name for f in p.iterdir()}
    if "tokenizer_config.json" in files:
        return AutoTokenizer.from_pretrained(str(p))
    if "tokenizer.json" in files:
        return _wrap_tokenizer_json(p / "tokenizer.json")
    if "spiece.model" in files:
        return T5TokenizerFast.from_pretrained(str(p), **kwargs)
    if {"vocab.json", "merges.txt"} <= files:
        return GPT2TokenizerFast.from_pretrained(str(p))
    if "vocab.txt" in files:
        return BertTokenizerFast.from_pretrained(str(p))
    raise UserError(f"tokenizer.path {path}: no tokenizer files found (tokenizer.json, spiece.model, "
                    f"vocab.json+merges.txt or vocab.txt)")


def _wrap_tokenizer_json(path: Path) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    vocab = tok.get_vocab()
    for attr, candidates in (("pad_token", ["<pad>", "[PAD]"]), ("eos_token", ["</s>", "<|endoftext|>", "[SEP]"]),
                             ("unk_token", ["<unk>", "[UNK]"]), ("bos_token", ["<s>", "[CLS]"])):
        found = next((c for c in candidates if c in vocab), None)
        if found:
            setattr(tok, attr, found)
    return tok


def train_tokenizer(texts, cfg: TokenizerTrainConfig) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-style (Metaspace) BPE or Unigram tokenizer that appends ``</s>``.

    Metaspace keeps word boundaries as '▁', so decoding restores the original spacing."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if cfg.model == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS,
                                          unk_token="<unk>", show_progress=False)
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainer=trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers map every token to the same id (logit KD needs this)."""
    return a is b or a.get_vocab() == b.get_vocab()


# --------------------------------------------------------------------------- models
def attention_kwargs(attentions: bool) -> dict:
    """Loader keywords for a model whose attention maps are needed: transformers 5's default sdpa
    attention returns none, eager attention does."""
    return {"attn_implementation": "eager"} if attentions else {}


def build_model(cfg: ModelConfig, tokenizer, attentions: bool = False, causal_ok: bool = False):
    """A seq2seq model: pretrained by name/path, or randomly initialised from ``cfg.arch``.

    ``attentions=True`` selects eager attention: transformers 5's sdpa returns no attention maps."""
    attn = attention_kwargs(attentions)
    if cfg.init == "pretrained":
        causal = causal_ok and is_causal_lm(cfg.name_or_path, cfg.kind)
        loader = AutoModelForCausalLM.from_pretrained if causal else AutoModelForSeq2SeqLM.from_pretrained
        model = from_hub(loader, cfg.name_or_path, "model", **attn)
        check_vocab_fits(model, tokenizer, cfg.name_or_path)
        return model
    model = scratch_model(cfg.arch, tokenizer, **attn)
    n = sum(p.numel() for p in model.parameters())
    log.info("built %s from scratch: %.2fM parameters, vocab %d", cfg.arch.type, n / 1e6, len(tokenizer))
    return model


def scratch_model(arch: ArchConfig, tokenizer, **kwargs):
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    config = scratch_config(arch, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, bos)
    model_class = T5ForConditionalGeneration if arch.type == "t5" else BartForConditionalGeneration
    return model_class._from_config(config, **kwargs)


def scratch_config(arch: ArchConfig, vocab_size: int, pad: int, eos: int, bos: int):
    """The transformers config of a model built from ``arch``; T5 starts decoding at pad, BART at eos."""
    if arch.type == "t5":
        return T5Config(vocab_size=vocab_size, d_model=arch.d_model, d_kv=arch.d_model // arch.heads,
                        d_ff=arch.d_ff, num_layers=arch.encoder_layers, num_decoder_layers=arch.decoder_layers,
                        num_heads=arch.heads, dropout_rate=arch.dropout, decoder_start_token_id=pad,
                        pad_token_id=pad, eos_token_id=eos)
    return BartConfig(vocab_size=vocab_size, d_model=arch.d_model, encoder_layers=arch.encoder_layers,
                      decoder_layers=arch.decoder_layers, encoder_attention_heads=arch.heads,
                      decoder_attention_heads=arch.heads, encoder_ffn_dim=arch.d_ff, decoder_ffn_dim=arch.d_ff,
                      dropout=arch.dropout, max_position_embeddings=arch.max_positions, bos_token_id=bos,
                      decoder_start_token_id=eos, forced_eos_token_id=eos, pad_token_id=pad, eos_token_id=eos)


# Config attribute names of the layer counts, by model family.
_LAYER_ATTRS = {"t5": ("num_layers", "num_decoder_layers"), "mt5": ("num_layers", "num_decoder_layers"),
                "umt5": ("num_layers", "num_decoder_layers"), "bart": ("encoder_layers", "decoder_layers"),
                "mbart": ("encoder_layers", "decoder_layers"), "pegasus": ("encoder_layers", "decoder_layers"),
                "marian": ("encoder_layers", "decoder_layers")}
_LAYER_KEY = re.compile(r"^(.*?\b(encoder|decoder)\.(?:layers|block))\.(\d+)\.(.*)$")


def evenly_spaced(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layers copied into a shallower student: first and last kept, the rest evenly spaced.

    12 -> 6 gives [0, 2, 4, 7, 9, 11], DistilBART's choice for distilbart-cnn-12-6."""
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def shrink_model(teacher, encoder_layers: int, decoder_layers: int, d_model: int | None = None,
                 d_ff: int | None = None, **kwargs):
    """A student of the teacher's architecture with fewer layers, initialised from evenly spaced
    teacher layers and every non-layer weight (embeddings, norms, LM head) of the teacher
    ("shrink and fine-tune", Shleifer & Rush, 2020). With a smaller ``d_model`` / ``d_ff`` every
    weight is also cut to the narrower axes (:func:`narrow_to`)."""
    config, keep = shrunk_config(teacher.config, encoder_layers, decoder_layers, d_model, d_ff)
    student = AutoModelForSeq2SeqLM.from_config(config, **kwargs)
    source = teacher.state_dict()
    trained = {n for n, p in student.named_parameters(remove_duplicate=False) if p.requires_grad}  # tied names too
    state = {}
    for key, like in student.state_dict().items():
        m = _LAYER_KEY.match(key)
        src = f"{m[1]}.{keep[m[2]][int(m[3])]}.{m[4]}" if m else key
        # a frozen table of another width (Marian's sinusoidal positions) is the student's own, not a cut
        fixed = key not in trained and like.shape != source[src].shape
        state[key] = like if fixed else narrow_to(source[src], like.shape).clone()
    student.load_state_dict(state)
    log.info("student shrunk from the teacher: encoder layers %s, decoder layers %s, d_model %d", keep["encoder"],
             keep["decoder"], config.d_model)
    return student


def shrunk_config(teacher_config, encoder_layers: int, decoder_layers: int, d_model: int | None = None,
                  d_ff: int | None = None):
    """``(the student's config, {"encoder": teacher layers kept, "decoder": ...})``; refuses a shrink
    the teacher cannot give (also called before a teacher is trained: pipeline.preflight)."""
    config = copy.deepcopy(teacher_config)
    attrs = _LAYER_ATTRS.get(config.model_type)
    if attrs is None:
        raise UserError(f"student.init shrink supports T5- and BART-style teachers, not {config.model_type!r}; "
                        f"use init scratch or pretrained")
    t_enc, t_dec = getattr(config, attrs[0]), getattr(config, attrs[1])
    if encoder_layers > t_enc or decoder_layers > t_dec:
        raise UserError(f"student.arch: shrink keeps at most the teacher's {t_enc} encoder and {t_dec} decoder "
                        f"layers, got {encoder_layers} and {decoder_layers}")
    setattr(config, attrs[0], encoder_layers)
    setattr(config, attrs[1], decoder_layers)
    narrow_config(config, d_model, d_ff)
    return config, {"encoder": evenly_spaced(t_enc, encoder_layers), "decoder": evenly_spaced(t_dec, decoder_layers)}


# Config attribute names of the feed-forward widths, by model family (d_model is "d_model" in all).
_FF_ATTRS = {"t5": ("d_ff",), "mt5": ("d_ff",), "umt5": ("d_ff",)}
_BART_FF = ("encoder_ffn_dim", "decoder_ffn_dim")


def narrow_config(config, d_model: int | None, d_ff: int | None) -> None:
    """Set a narrower width on a copy of the teacher's config. The heads are kept and each gets
    narrower (T5's ``d_kv`` scales with ``d_model``), so a weight's attention axis (heads x head
    width) is cut head by head by :func:`narrow_to`."""
    t_model = config.d_model
    ff_attrs = _FF_ATTRS.get(config.model_type, _BART_FF)
    for name, new, old in (("d_model", d_model, t_model), ("d_ff", d_ff, min(getattr(config, a) for a in ff_attrs))):
        if new is not None and new > old:
            raise UserError(f"student.narrow.{name}: {new} is wider than the teacher's {old}; shrink only narrows "
                            f"(use at most {old}, or init scratch for a wider student)")
    if d_model is not None and d_model != t_model:
        if config.model_type in _FF_ATTRS:   # T5: d_kv * d_model / the teacher's d_model must be whole
            unit = t_model // math.gcd(t_model, config.d_kv)
            why = f"a whole d_kv (the teacher's d_kv {config.d_kv} scaled by {d_model}/{t_model})"
        else:                                # BART: d_model / heads must be whole
            unit = math.lcm(config.encoder_attention_heads, config.decoder_attention_heads)
            why = "each of the teacher's attention heads a whole width"
        if d_model % unit:
            raise UserError(f"student.narrow.d_model: {d_model} does not give {why}; use a multiple of {unit}")
        if config.model_type in _FF_ATTRS:
            config.d_kv = config.d_kv * d_model // t_model
        config.d_model = d_model
    if d_ff is not None:
        for attr in ff_attrs:
            setattr(config, attr, d_ff)


def narrow_to(weight, shape):
    """``weight`` cut to ``shape``: on every narrower axis the indices floor(i * n_teacher / n_student)
    ("weight selection", Xu et al., 2024). The same indices on every weight keep the residual stream's
    coordinates consistent from layer to layer; on an attention axis of H heads x width a the
    indices are h * a + floor(j * a / b): every head kept, each cut the same way."""
    for axis, (n_t, n_s) in enumerate(zip(weight.shape, shape)):
        if n_s != n_t:
            index = torch.arange(n_s) * n_t // n_s
            weight = weight.index_select(axis, index)
    return weight


def check_vocab_fits(model, tokenizer, name: str) -> None:
    """Every id the tokenizer can produce from text must have an embedding row.

    Special tokens beyond the table are tolerated with a warning: bart-large-cnn's tokenizer has
    50,265 tokens for 50,264 rows because ``<mask>`` has none, and text never produces it."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return
    extra = tokenizer.convert_ids_to_tokens(list(range(rows, len(tokenizer))))
    if set(extra) <= set(tokenizer.all_special_tokens):
        log.warning("model %s: special tokens %s have no embedding row (harmless unless text contains them)",
                    name, ", ".join(extra))
        return
    raise UserError(f"tokenizer has {len(tokenizer)} tokens but model {name} has only {rows} embedding rows; "
                    f"use the model's own tokenizer")


def load_saved(path: str | Path, what: str, attentions: bool = False, causal_ok: bool = False):
    """A model exported by this tool (or any save_pretrained directory) and its tokenizer; with
    ``causal_ok`` (a teacher) a decoder-only LM loads as such."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"{what} {path}: not a saved model directory (no config.json); give the directory "
                        f"written by train_teacher / distill_student (…/final)")
    attn = attention_kwargs(attentions)
    causal = causal_ok and is_causal_lm(p)
    loader = AutoModelForCausalLM.from_pretrained if causal else AutoModelForSeq2SeqLM.from_pretrained
    model = load_local(loader, p, what, **attn)
    tok = load_local(tokenizer_from_path, p, what)
    check_vocab_fits(model, tok, str(p))
    return model, tok


def _plain_tokenizer(tokenizer, positions: int | None) -> None:
    """What a user of the exported model expects of its tokenizer: no truncation or padding baked into
    tokenizer.json (our collator's last call leaves its max_length there, which cuts longer inputs
    silently in a plain ``tokenizers`` load), and ``model_max_length`` the model's position limit when
    it has one (BART), so ``truncation=True`` cuts there and a longer input is warned about by
    transformers; T5's relative positions have no limit to state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    if positions:
        tokenizer.model_max_length = positions


def export(model, tokenizer, out_dir: Path, decoding=None) -> Path:
    """save_pretrained (safetensors) plus the tokenizer, loadable by the Auto classes.

    ``decoding`` (a GenerationConfig, :func:`generation.generation_config`) becomes the saved
    generation_config.json, so a plain ``model.generate(**inputs)`` decodes as the benchmark does.

    Written to a sibling temporary directory and renamed, so ``out_dir`` is never half written:
    its existence means the stage finished (``--resume_from_checkpoint auto`` relies on that).
    The files depend on the weights and settings only, not on how the tokenizer was used before."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if decoding is not None:
        model.generation_config = decoding
    _plain_tokenizer(tokenizer, getattr(model.config, "max_position_embeddings", None))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    except OSError as e:  # e.g. the disk is full: the checkpoints are complete, only the export is missing
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot export the model to {out_dir} ({e.strerror or one_line(e)}); free some space "
                        f"(or fix the directory), then rerun with --resume_from_checkpoint auto: training is "
                        f"complete and only the export is repeated") from None
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
