"""Shared fixtures. Every test runs offline: no model hub, no dataset hub."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest
import torch

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

TINY_ARCH = {"type": "bart", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "heads": 2, "d_ff": 64,
             "dropout": 0.1, "max_positions": 64}
TINY_OPTIM = {"max_steps": 6, "batch_size": 8, "eval_batch_size": 16, "learning_rate": 3e-3, "eval_every": 3,
              "log_every": 2, "warmup_ratio": 0.0}

TINY_CONFIG = {
    "teacher": {"init": "scratch", "arch": dict(TINY_ARCH, d_model=48), "tokenizer": {"train": {"vocab_size": 128}}},
    "student": {"init": "scratch", "arch": TINY_ARCH, "tokenizer": {"train": {"vocab_size": 128}}},
    "data": {"synthetic": {"task": "polite_rewrite", "num_examples": 120, "seed": 1}, "max_source_length": 40,
             "max_target_length": 40, "split_ratios": [0.8, 0.1, 0.1]},
    "training": {"precision": "fp32", "device": "cpu", "teacher": dict(TINY_OPTIM), "student": dict(TINY_OPTIM)},
    "distill": {"ce_weight": 0.5, "losses": [{"name": "vanilla_kl", "weight": 0.5, "temperature": 2.0}]},
    "benchmark": {"batch_size": 16, "max_new_tokens": 12, "warmup_batches": 0},
}


@pytest.fixture(autouse=True)
def _kd_log_reaches_caplog():
    """main() stops the 'kd' logger from propagating (no duplicate lines); caplog needs it to."""
    import logging
    logging.getLogger("kd").propagate = True


@pytest.fixture
def tiny_config_dict():
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict as JSON (or YAML for a .yaml name) and return its path."""
    def write(data: dict, name: str = "config.json") -> Path:
        path = tmp_path / name
        if name.endswith((".yaml", ".yml")):
            import yaml
            path.write_text(yaml.safe_dump(data))
        else:
            path.write_text(json.dumps(data))
        return path
    return write


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); it holds the real data and tokenizer files")
    return SHARED


# --------------------------------------------------------------------------- tiny scorer models
def _bert_tokenizer():
    from transformers import BertTokenizerFast
    return BertTokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "bert-base-uncased"))


def _tiny_bert_config(**kw):
    from transformers import BertConfig
    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **kw)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """Random 2-layer BERT encoder with the real WordPiece vocab; its tokenizer has no
    model_max_length (1e30), which bert_score cannot truncate with under transformers 5."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); it holds the real tokenizer files")
    from transformers import BertModel
    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(_tiny_bert_config()).save_pretrained(path)
    _bert_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_classifiers(tmp_path_factory) -> dict[str, str]:
    """Random 2-label BERT classifiers (0 neutral, 1 toxic): 'random', 'toxic' (bias says toxic), 'neutral'."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); it holds the real tokenizer files")
    from transformers import BertForSequenceClassification
    out = {}
    for kind, bias in (("random", None), ("toxic", [-20.0, 20.0]), ("neutral", [20.0, -20.0])):
        torch.manual_seed(0)
        model = BertForSequenceClassification(_tiny_bert_config(
            num_labels=2, id2label={0: "neutral", 1: "toxic"}, label2id={"neutral": 0, "toxic": 1}))
        if bias:
            with torch.no_grad():
                model.classifier.bias.copy_(torch.tensor(bias))
        path = tmp_path_factory.mktemp(f"clf_{kind}")
        model.save_pretrained(path)
        _bert_tokenizer().save_pretrained(path)
        out[kind] = str(path)
    return out


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> str:
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}); it holds the real tokenizer files")
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    tok = GPT2TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "gpt2"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64))
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)




@pytest.fixture
def no_connections(monkeypatch):
    """Every socket connection is refused and recorded: a test asserts the list stays empty (offline,
    the hub libraries' ~25 s of network retries must never start)."""
    import socket
    attempts = []

    def refuse(sock, address, *args):
        attempts.append(address)
        raise OSError("network disabled by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts
