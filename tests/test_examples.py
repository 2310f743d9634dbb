"""The example configs: they load from any directory, their paths agree, the detox recipe is the recipe."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from settings import load_config
from conftest import ROOT

EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_from_another_directory_and_finds_its_files(path, shared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on where the user stands
    cfg = load_config(path)
    for p in (cfg.data.train_file, cfg.teacher.tokenizer.path, cfg.student.tokenizer.path):
        if p:
            assert Path(p).exists(), f"{path.name}: {p} does not exist"
    # every mention of the shared folder (paths and comments alike) is written the same way
    for mention in re.findall(r"[./]*shared/", path.read_text()):
        assert mention == "../../../shared/", f"{path.name}: {mention!r}"


def test_paradetox_recipe_settings():
    cfg = load_config(ROOT / "configs" / "examples" / "paradetox_t5.yaml")
    assert cfg.data.prefix == "detoxify: " and cfg.data.max_source_length == cfg.data.max_target_length == 96
    assert cfg.distill.ce_weight == 1.0
    [kd] = cfg.distill.losses
    assert (kd.name, kd.weight, kd.params) == ("vanilla_kl", 0.7, {"temperature": 2.0})
    for role in ("teacher", "student"):
        o = getattr(cfg.training, role)
        assert (o.batch_size, o.gradient_accumulation_steps, o.learning_rate, o.epochs) == (4, 2, 2e-4, 3)
    assert cfg.training.precision == "fp16"
    assert "training.precision=fp32" in (ROOT / "configs/examples/paradetox_t5.yaml").read_text()  # the CPU note
    b = cfg.benchmark
    assert (b.num_beams, b.no_repeat_ngram_size, b.length_penalty) == (4, 3, 0.8)
    assert {"idiot", "stupid", "shut up"} <= set(b.bad_phrases)
    assert {"style_accuracy", "content_preservation", "fluency_perplexity"} <= set(b.metrics)
