"""Custom losses named 'pkg.module:Class': the README's example trains; bad ones get one line, exit 2."""
from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import ROOT
from distiller_zoo import LossConfigError, build_loss
from main import main


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- custom-loss-example:start -->\s*```python\n(.*?)```", text, re.S)
    return block.group(1)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The README's my_losses.py in a directory of the user's, which is the working directory."""
    (tmp_path / "my_losses.py").write_text(readme_example())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "my_losses", raising=False)
    return tmp_path


def test_readme_example_is_short_and_computes_its_formula(user_module):
    assert len(readme_example().strip().splitlines()) <= 10
    loss = build_loss("my_losses:Hellinger", {"temperature": 1.0})
    loss.vocab_size = 5
    torch.manual_seed(0)
    zs, zt = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    out = type("Out", (), {})
    s, t = out(), out()
    s.logits, t.logits = zs, zt
    mask = labels != -100
    p = torch.softmax(zt.double()[mask][:, :5], -1)
    q = torch.softmax(zs.double()[mask][:, :5], -1)
    bc = (p * q).sqrt().sum(-1)
    expected = (1 - bc).sum()
    # float32 against float64: each token's sum BC passes ~16 float32 roundings (log-softmax of 5
    # values, the exp, a 5-term sum), each eps32-relative to BC, and 1 - BC magnifies that by BC / (1 - BC)
    rel = 16 * torch.finfo(torch.float32).eps * float(1 + bc.sum() / expected)
    assert float(loss(s, t, labels)) == pytest.approx(float(expected), rel=rel)


def test_readme_example_trains_a_student(user_module, tiny_config_dict, write_config, caplog):
    tiny_config_dict["distill"] = {"ce_weight": 1.0, "losses": [{"name": "my_losses:Hellinger", "weight": 0.5}]}
    path, out = str(write_config(tiny_config_dict)), user_module / "run"
    assert main(["--mode", "train_teacher", "--config", path, "--output_dir", str(out)]) == 0
    assert main(["--mode", "distill_student", "--config", path, "--output_dir", str(out)]) == 0
    records = [json.loads(line) for line in (out / "student" / "metrics.jsonl").read_text().splitlines()]
    terms = [r["my_losses:Hellinger"] for r in records if "loss" in r]
    assert terms and all(v > 0 for v in terms)
    assert "loss = 1 * CE + 0.5 * Hellinger(T=1)" in (out / "logs" / "run.log").read_text()


BAD = {
    "no_such_module_xyz:Loss": "cannot import module 'no_such_module_xyz' (ModuleNotFoundError",
    "broken_mod:Loss": "cannot import module 'broken_mod' (SyntaxError",
    "plain_mod:Missing": "module 'plain_mod' has no 'Missing'",
    "plain_mod:NotALoss": "NotALoss must be a class subclassing distiller_zoo.DistillationLoss",
    "plain_mod:helper": "helper must be a class subclassing distiller_zoo.DistillationLoss",
    "plain_mod:Abstract": "Abstract does not implement divergence",
    "plain_mod:Scalar": "divergence must return one real value per row, shape [3] for [3, 5] inputs; got []",
    "exiting_mod:Loss": "importing exiting_mod called sys.exit(0)",
    "nonsense": "unknown loss 'nonsense'",
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_custom_losses_are_one_line_errors(name, tmp_path, monkeypatch, tiny_config_dict, write_config, capsys):
    (tmp_path / "broken_mod.py").write_text("def f(:\n")
    (tmp_path / "exiting_mod.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "plain_mod.py").write_text("from distiller_zoo import LogitLoss\nclass NotALoss:\n    pass\n"
                                           "def helper():\n    pass\nclass Abstract(LogitLoss):\n    pass\n"
                                           "class Scalar(LogitLoss):\n    def divergence(self, q, p):\n"
                                           "        return (p - q).sum()\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LossConfigError, match=re.escape(BAD[name])):
        build_loss(name)
    tiny_config_dict["distill"]["losses"] = [{"name": name, "weight": 0.5}]
    code = main(["--mode", "distill_student", "--config", str(write_config(tiny_config_dict)), "--output_dir",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and BAD[name] in err and "Traceback" not in err


def test_unknown_option_of_a_custom_loss(user_module):
    with pytest.raises(LossConfigError, match="has no option 'beta'; its options: temperature"):
        build_loss("my_losses:Hellinger", {"beta": 1})
