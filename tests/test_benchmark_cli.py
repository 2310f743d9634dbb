"""Benchmark mode on the models given on the command line; the run log's summary line; messages."""
from __future__ import annotations

import json

import pytest

from main import main


@pytest.fixture(scope="module")
def exported_teacher(tmp_path_factory):
    """A tiny scratch BART and its trained tokenizer, exported as train_teacher would."""
    from settings import ArchConfig, TokenizerTrainConfig
    from models import export, scratch_model, train_tokenizer
    from demo_data import generate
    rows = generate("polite_rewrite", 60, 0)
    texts = [t for r in rows for t in (r["source"], r["target"])]
    tok = train_tokenizer(texts, TokenizerTrainConfig(vocab_size=128))
    model = scratch_model(ArchConfig(type="bart", d_model=32, encoder_layers=1, decoder_layers=1, heads=2, d_ff=64,
                                     max_positions=64), tok)
    return export(model, tok, tmp_path_factory.mktemp("teacher") / "final")


def test_benchmark_evaluates_exactly_the_models_on_the_command_line(tiny_config_dict, write_config, tmp_path,
                                                                     exported_teacher):
    # the config's student is a hub model that cannot load offline: it must not even be tried
    tiny_config_dict["student"] = {"name_or_path": "t5-small"}
    tiny_config_dict["benchmark"].update(bootstrap_samples=0, latency_samples=0, metrics=["rouge"],
                                         baselines=["copy_source"])
    out = tmp_path / "bench"
    assert main(["--mode", "benchmark", "--config", str(write_config(tiny_config_dict)), "--output_dir", str(out),
                 "--teacher_path", str(exported_teacher)]) == 0
    results = json.loads((out / "benchmark_results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["teacher", "copy_source"]
    # the log: one short summary line naming the resolved config file, which has no arch for t5-small
    log = (out / "logs" / "run.log").read_text()
    line = next(l for l in log.splitlines() if "resolved config in" in l)
    assert len(line) < 400 and str((out / "config.resolved.json").resolve()) in line
    assert "student t5-small" in line and "teacher scratch bart (d_model 48, 1+1 layers)" in line
    assert '"d_ff"' not in log  # the config itself is in the file, not in the log
    resolved = json.loads((out / "config.resolved.json").read_text())
    assert "arch" not in resolved["student"] and resolved["teacher"]["arch"]["d_model"] == 48


def test_an_unsupported_model_kind_is_named_with_the_supported_ones(tmp_path, capsys, tiny_config_dict, write_config):
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    code = main(["--mode", "benchmark", "--config", str(write_config(tiny_config_dict)), "--output_dir",
                 str(tmp_path / "o"), "--student_path", str(tmp_path / "gpt2")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "model type is 'gpt2'" in err and "t5, mt5, umt5" in err and "bart, mbart, pegasus, marian" in err
    assert "Model type should be one of" not in err and "AudioFlamingo" not in err
