"""A user's loss module cannot end the run silently, and a divergence of the wrong shape is refused.

Every call into a custom loss at build time (import, constructor, bind, a probe of ``divergence`` on
a tiny input) turns an exit or an error into one line; the shape is checked again wherever
``divergence`` is consumed (:meth:`LogitLoss.checked_divergence`)."""
from __future__ import annotations

import importlib
import itertools
import re
import sys

import pytest
import torch

from distiller_zoo import LossConfigError, LossOutputError, Objective, build_loss
from main import main

_ids = itertools.count()

LOSS = "from distiller_zoo import LogitLoss\nclass L(LogitLoss):\n{body}"
GOOD_DIVERGENCE = "    def divergence(self, log_q, log_p):\n        return (log_p.exp() * (log_p - log_q)).sum(-1)\n"

# module text -> what the one-line error says (the module is named m_<n>)
AT_IMPORT = {
    "import sys\nsys.exit(0)\n": "importing {m} called sys.exit(0)",
    "import sys\nsys.exit(3)\n": "importing {m} called sys.exit(3)",
    "raise SystemExit('text')\n": "importing {m} called sys.exit('text')",
    "import sys\nsys.exit()\n": "importing {m} called sys.exit()",
    "import not_installed_dep_zz\n": "cannot import module '{m}' (ModuleNotFoundError: No module named "
                                     "'not_installed_dep_zz'); the error is inside the module ({m}.py, line 1)",
    "x = 1\nraise ImportError('needs foo')\n": "cannot import module '{m}' (ImportError: needs foo); "
                                               "the error is inside the module ({m}.py, line 2)",
    "1 / 0\n": "cannot import module '{m}' (ZeroDivisionError: division by zero)",
    LOSS.format(body="    def __init__(self):\n        import sys; sys.exit(0)\n" + GOOD_DIVERGENCE):
        "loss '{m}:L': L(...) called sys.exit(0)",
    LOSS.format(body="    def __init__(self):\n        raise SystemExit('bye')\n" + GOOD_DIVERGENCE):
        "loss '{m}:L': L(...) called sys.exit('bye')",
    LOSS.format(body="    def __init__(self):\n        raise RuntimeError('no GPU')\n" + GOOD_DIVERGENCE):
        "loss '{m}:L': L(...) raised RuntimeError: no GPU",
    LOSS.format(body="    def describe(self):\n        raise SystemExit(0)\n" + GOOD_DIVERGENCE):
        "loss '{m}:L': describe() called sys.exit(0)",
}

# divergence body -> the "got ..." of the shape error (inputs are [3, 5])
WRONG = {
    "return (log_p.exp() * (log_p - log_q)).sum()": "got [] of float32",
    "return log_p.exp() * (log_p - log_q)": "got [3, 5] of float32",
    "return (log_p - log_q).sum(-1, keepdim=True)": "got [3, 1] of float32",
    "return torch.cat([(log_p - log_q).sum(-1), torch.zeros(1)])": "got [4] of float32",
    "return 1.5": "got a float",
    "return [0.0] * len(log_q)": "got a list",
    "return (log_p > log_q).any(-1)": "got [3] of bool",                            # trained at 0, silently
    "return (log_p - log_q).sum(-1).long()": "got [3] of int64",
    "return torch.complex((log_p - log_q).sum(-1), (log_p - log_q).sum(-1))": "got [3] of complex64",
}


@pytest.fixture
def module(tmp_path, monkeypatch):
    """write(text) -> the name of a fresh module holding ``text``, importable from the working directory."""
    monkeypatch.chdir(tmp_path)
    names = []

    def write(text: str) -> str:
        name = f"m_{next(_ids)}"   # a name of its own: sys.path keeps the directories of earlier tests
        (tmp_path / f"{name}.py").write_text("import torch\n" + text if "torch" in text else text)
        importlib.invalidate_caches()
        names.append(name)
        return name
    yield write
    for name in names:
        sys.modules.pop(name, None)


def wrong_loss(body: str) -> str:
    return LOSS.format(body=f"    def divergence(self, log_q, log_p):\n        {body}\n")


@pytest.mark.parametrize("text", list(AT_IMPORT), ids=range(len(AT_IMPORT)))
def test_an_exit_or_error_in_user_code_is_one_line(module, text):
    name = module(text)
    with pytest.raises(LossConfigError) as e:
        build_loss(f"{name}:L")
    message = str(e.value)
    assert AT_IMPORT[text].format(m=name) in message and "\n" not in message


def test_ctrl_c_while_importing_is_not_swallowed(module):
    with pytest.raises(KeyboardInterrupt):
        build_loss(f"{module('raise KeyboardInterrupt')}:L")


@pytest.mark.parametrize("body", list(WRONG))
def test_a_divergence_of_the_wrong_shape_is_refused_when_built(module, body):
    name = module(wrong_loss(body))
    with pytest.raises(LossOutputError) as e:
        build_loss(f"{name}:L")
    assert str(e.value) == (f"loss '{name}:L': divergence must return one real value per row, shape [3] for "
                            f"[3, 5] inputs; {WRONG[body]}")


def test_a_non_finite_divergence_is_refused_when_built(module):
    name = module(wrong_loss("return (log_p - log_q).sum(-1) * float('nan')"))
    with pytest.raises(LossOutputError, match=re.escape(f"loss '{name}:L': divergence returned [nan, nan, nan] "
                                                        f"(not finite)")):
        build_loss(f"{name}:L")


def test_an_error_in_divergence_is_one_line(module):
    name = module(wrong_loss("raise TypeError('oops')"))
    with pytest.raises(LossConfigError, match=re.escape(f"loss '{name}:L': divergence raised TypeError: oops")):
        build_loss(f"{name}:L")


BINDS = "    def bind(self, s, t):\n        self.bound = True\n"


@pytest.mark.parametrize("body", list(WRONG)[:3])
def test_a_loss_with_bind_is_probed_when_bound_and_checked_where_consumed(module, body):
    """A loss that sizes itself in bind is probed by Objective.bind; a wrong shape that reaches
    training anyway (no bind called) is refused where divergence is consumed."""
    name = module(LOSS.format(body=BINDS + f"    def divergence(self, log_q, log_p):\n        {body}\n"))
    loss = build_loss(f"{name}:L")   # divergence may need bind: not probed yet
    with pytest.raises(LossOutputError, match=re.escape(WRONG[body])):
        Objective(1.0, [("x", 1.0, loss)]).bind(None, None)
    assert loss.bound
    z = torch.randn(4, 6)
    with pytest.raises(LossOutputError, match=re.escape("shape [4] for [4, 6] inputs")):
        loss.token_losses(z, z.flip(0))


def test_bind_that_exits_is_one_line(module):
    name = module(LOSS.format(body="    def bind(self, s, t):\n        raise SystemExit(0)\n" + GOOD_DIVERGENCE))
    with pytest.raises(LossConfigError, match=re.escape(f"loss '{name}:L': bind called sys.exit(0)")):
        Objective(1.0, [("x", 1.0, build_loss(f"{name}:L"))]).bind(None, None)


def test_good_losses_pass_the_probe_without_touching_the_random_stream(module):
    name = module(LOSS.format(body=GOOD_DIVERGENCE))
    state = torch.get_rng_state()
    for loss in ("vanilla_kl", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl", "uld", f"{name}:L"):
        build_loss(loss)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("text", ["import sys\nsys.exit(0)\n", wrong_loss(list(WRONG)[0])], ids=["exit0", "scalar"])
def test_through_main_exit_2_one_line_and_nothing_written(module, tmp_path, text, tiny_config_dict, write_config,
                                                          capsys):
    name = module(text)
    tiny_config_dict["distill"]["losses"] = [{"name": f"{name}:L", "weight": 0.5}]
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    code = main(["--mode", "distill_student", "--config", str(write_config(tiny_config_dict)), "--output_dir",
                 str(out)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: distill.losses[0]: loss '{name}:L': ")
    assert ("sys.exit(0)" if "exit" in text else "got []") in err[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == before


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    from conftest import TINY_CONFIG
    tmp = tmp_path_factory.mktemp("uc_teacher")
    (tmp / "config.json").write_text(__import__("json").dumps(TINY_CONFIG))
    assert main(["--mode", "train_teacher", "--config", str(tmp / "config.json"), "--output_dir", str(tmp / "run")]) == 0
    return tmp / "run/teacher/final"


LATER = {  # user code that passes the probe and fails in training (the probe's input has 3 rows)
    "exit": (LOSS.format(body="    def divergence(self, log_q, log_p):\n        if len(log_q) > 3:\n"
                              "            raise SystemExit(0)\n        return (log_p.exp() * (log_p - log_q)).sum(-1)\n"),
             "divergence called sys.exit(0)"),
    "generator_exit": (LOSS.format(body="    def divergence(self, log_q, log_p):\n        if len(log_q) > 3:\n"
                                        "            raise GeneratorExit\n"
                                        "        return (log_p.exp() * (log_p - log_q)).sum(-1)\n"),
                       "divergence raised GeneratorExit"),
    "forward_shape": ("import torch\nfrom distiller_zoo import DistillationLoss\nclass L(DistillationLoss):\n"
                      "    requires = frozenset({'hidden'})\n"
                      "    def forward(self, s, t, labels, mask=None):\n        return torch.zeros(labels.shape)\n",
                      "forward must return one real number"),
    "forward_error": ("from distiller_zoo import DistillationLoss\nclass L(DistillationLoss):\n"
                      "    requires = frozenset({'hidden'})\n"
                      "    def forward(self, s, t, labels, mask=None):\n        return s.logits.sum()\n",
                      "raised AttributeError"),
}


@pytest.mark.parametrize("kind", list(LATER))
def test_user_code_failing_in_training_is_one_line_not_a_silent_exit(kind, module, tmp_path, tiny_config_dict,
                                                                    write_config, trained_teacher, capsys):
    text, message = LATER[kind]
    name = module(text)
    tiny_config_dict["distill"]["losses"] = [{"name": f"{name}:L", "weight": 0.5}]
    code = main(["--mode", "distill_student", "--config", str(write_config(tiny_config_dict)), "--output_dir",
                 str(tmp_path / "out"), "--teacher_path", str(trained_teacher)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out/student/final").exists()
