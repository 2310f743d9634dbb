"""Tokenizers (real files from ../shared, trained ones) and models (scratch, hub guard, export)."""
from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from settings import ArchConfig, ModelConfig, TokenizerConfig, TokenizerTrainConfig
from models import (build_model, export, from_hub, load_saved, load_tokenizer, same_vocabulary, scratch_model,
                    tokenizer_from_path, train_tokenizer)
from utils.errors import UserError

TEXTS = ["the quick brown fox jumps over the lazy dog.", "hello world, this is a test!",
         "you are a stupid idiot.", "you are an unwise person."] * 20


def test_real_t5_sentencepiece_gives_32000_pieces_plus_extras(shared):
    tok = tokenizer_from_path(str(shared / "tokenizers/t5/spiece.model"))
    assert len(tok) == 32100
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tokenizer_from_path(str(shared / "tokenizers/t5"), extra_ids=0)) == 32000
    ids = tok("detoxify: you are rude").input_ids
    assert ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == "detoxify: you are rude"


def test_real_gpt2_and_bert_tokenizers(shared):
    gpt2 = tokenizer_from_path(str(shared / "tokenizers/gpt2"))
    assert len(gpt2) == 50257 and gpt2.eos_token_id == 50256
    bert = tokenizer_from_path(str(shared / "tokenizers/bert-base-uncased"))
    assert len(bert) == 30522
    # load_tokenizer gives a GPT-2 tokenizer a pad token (it ships without one)
    tok = load_tokenizer(TokenizerConfig(path=str(shared / "tokenizers/gpt2")), None)
    assert tok.pad_token_id == 50256


def test_missing_tokenizer_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        tokenizer_from_path(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no tokenizer files found"):
        tokenizer_from_path(str(tmp_path))


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_trained_tokenizer_round_trips_and_saves(tmp_path, kind):
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=120, model=kind))
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "</s>", "<unk>", "<s>"]
    for text in ["you are a stupid idiot.", "hello world, this is a test!"]:
        ids = tok(text).input_ids
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    again = tokenizer_from_path(str(tmp_path))
    assert again("hello world").input_ids == tok("hello world").input_ids
    assert same_vocabulary(tok, again)


def test_trained_tokenizer_is_deterministic():
    a = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=100))
    b = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=100))
    assert a.get_vocab() == b.get_vocab()


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_scratch_models_take_their_vocabulary_from_the_tokenizer(arch):
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=100))
    model = scratch_model(ArchConfig(type=arch, d_model=32, heads=2, d_ff=64, encoder_layers=2, decoder_layers=1), tok)
    assert model.get_input_embeddings().weight.shape == (len(tok), 32)
    assert model.config.pad_token_id == tok.pad_token_id and model.config.eos_token_id == tok.eos_token_id
    batch = tok(["hello world"], return_tensors="pt")
    out = model(**batch, labels=batch.input_ids)
    assert torch.isfinite(out.loss)
    eager = scratch_model(ArchConfig(type=arch, d_model=32, heads=2, d_ff=64), tok, attn_implementation="eager")
    out = eager(**batch, labels=batch.input_ids, output_attentions=True)
    assert out.encoder_attentions[0].shape == (1, 2, batch.input_ids.shape[1], batch.input_ids.shape[1])


def test_export_then_load_gives_identical_outputs(tmp_path):
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=100))
    model = scratch_model(ArchConfig(type="bart", d_model=32, heads=2, d_ff=64), tok).eval()
    export(model, tok, tmp_path / "final")
    assert (tmp_path / "final/model.safetensors").is_file()
    loaded, tok2 = load_saved(tmp_path / "final", "model")
    batch = tok(["hello world"], return_tensors="pt")
    dec = torch.tensor([[model.config.decoder_start_token_id, 5, 6]])
    torch.testing.assert_close(loaded.eval()(**batch, decoder_input_ids=dec).logits,
                               model(**batch, decoder_input_ids=dec).logits, rtol=0, atol=0)
    # the plain transformers Auto classes load it too
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "final").config.d_model == 32
    assert AutoTokenizer.from_pretrained(tmp_path / "final")("hello").input_ids == tok("hello").input_ids


def test_load_saved_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(UserError, match="not a saved model directory"):
        load_saved(tmp_path, "--teacher_path")


def test_unreachable_hub_name_fails_with_one_line_and_no_connection(no_connections):
    """Offline (conftest), the hub libraries' network retries never start: no socket connects at all."""
    attempts = no_connections
    with pytest.raises(UserError) as e:
        build_model(ModelConfig(name_or_path="t5-small"), tokenizer=None)
    assert attempts == []
    msg = str(e.value)
    assert "'t5-small' is not cached" in msg and "local directory" in msg and "\n" not in msg
    with pytest.raises(UserError, match="no such directory"):
        from_hub(AutoModelForSeq2SeqLM.from_pretrained, "./missing/model", "model")


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    small = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=60))
    big = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=120))
    assert len(big) > len(small)
    export(scratch_model(ArchConfig(type="t5", d_model=32, heads=2, d_ff=64), small), big, tmp_path / "m")
    with pytest.raises(UserError, match=r"tokenizer has \d+ tokens but model .* has only \d+ embedding rows"):
        load_saved(tmp_path / "m", "--student_path")


def test_broken_model_directories_give_one_line_errors(tmp_path):
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=100))
    export(scratch_model(ArchConfig(type="bart", d_model=32, heads=2, d_ff=64), tok), tok, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()  # config but no weights
    with pytest.raises(UserError, match=r"--teacher_path .*: cannot load a seq2seq model or tokenizer from it"):
        load_saved(tmp_path / "m", "--teacher_path")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="cannot load a seq2seq model"):
        load_saved(tmp_path / "bert", "--student_path")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load a seq2seq model"):
        load_saved(tmp_path / "bad", "--student_path")


def test_special_tokens_without_an_embedding_row_are_tolerated(tmp_path):
    """bart-large-cnn: 50,265 tokenizer ids, 50,264 rows, the extra one being <mask>."""
    tok = train_tokenizer(TEXTS, TokenizerTrainConfig(vocab_size=100))
    model = scratch_model(ArchConfig(type="bart", d_model=32, heads=2, d_ff=64), tok)
    tok.add_special_tokens({"mask_token": "<mask>"})
    assert len(tok) == model.get_input_embeddings().weight.shape[0] + 1
    export(model, tok, tmp_path / "m")
    loaded, tok2 = load_saved(tmp_path / "m", "model")
    assert len(tok2) == len(tok)
