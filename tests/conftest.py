"""Shared fixtures. Every test runs offline: no model hub, no dataset hub."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest

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
