"""Property-based: any JSON/YAML value tree gives a valid Config or a one-line UserError.

Never a traceback, never a hang: values of every type (NaN, inf, huge ints, text, nested lists
and mappings with non-string keys) planted anywhere in a valid config, written as JSON and as
YAML, plus YAML alias bombs of every size.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from settings import Config, load_config, to_dict
from conftest import TINY_CONFIG
from utils.errors import UserError


def _paths(tree, prefix=()):
    """Every dotted path of the tiny config (sections, keys, list items)."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, prefix + (i,))
    return out


FULL = to_dict(load_config(None))  # every key of the schema, with the demo's values
FILE_DATA = copy.deepcopy(TINY_CONFIG)
FILE_DATA["data"] = {"train_file": "train.csv", "validation_file": "val.csv", "max_source_length": 40,
                     "max_target_length": 40}
FILE_DATA["teacher"]["tokenizer"] = {"path": "tok"}
BASES = [TINY_CONFIG, FILE_DATA]  # the synthetic task and file data (paths are resolved on disk)
PATHS = sorted(set(_paths(TINY_CONFIG)) | set(_paths(FILE_DATA)) | set(_paths(FULL)), key=str)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308]),
    st.text(max_size=30), st.sampled_from(["", " ", "1e400", "nan", "inf", "auto", "t5", "bart", "../x", "a\x00b",
                                           "x" * 300, "/" + "y" * 5000, "~/" + "z" * 256 + "/t.csv"]),
)
keys = st.one_of(st.text(max_size=12), st.integers(-5, 5), st.booleans(), st.none(),
                 st.sampled_from(["name", "weight", "temperature", "params", "train", "arch", "d_model"]))
trees = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(keys, kids, max_size=4)), max_leaves=12)
plants = st.lists(st.tuples(st.sampled_from(PATHS), trees), min_size=1, max_size=3)


def plant(base: dict, path: tuple, value) -> dict:
    node = base
    for k in path[:-1]:
        nxt = node[k] if isinstance(node, list) and isinstance(k, int) and k < len(node) else (
            node.get(k) if isinstance(node, dict) else None)
        if not isinstance(nxt, (dict, list)):
            return base  # an earlier plant replaced this branch
        node = nxt
    last = path[-1]
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and last < len(node)):
        node[last] = value
    return base


def assert_config_or_one_line(path: Path):
    try:
        cfg = load_config(path)
    except UserError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 1000, msg
    else:
        assert isinstance(cfg, Config)
        json.dumps(to_dict(cfg), allow_nan=False)  # a valid config holds only finite numbers


def planted_tree(base: dict, planted) -> dict:
    """A copy of ``base`` with each (path, value) of ``planted`` put in place."""
    data = copy.deepcopy(base)
    for path, value in planted:
        data = plant(data, path, value)
    return data


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.sampled_from(BASES), plants)
def test_any_json_tree_gives_a_config_or_one_line(base, planted):
    data = planted_tree(base, planted)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        try:
            path.write_text(json.dumps(data))
        except (TypeError, ValueError):  # e.g. keys JSON cannot hold
            return
        assert_config_or_one_line(path)


@SETTINGS
@given(st.sampled_from(BASES), plants)
def test_any_yaml_tree_gives_a_config_or_one_line(base, planted):
    data = planted_tree(base, planted)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        assert_config_or_one_line(path)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.sampled_from(["data.prefix", "distill.losses", "benchmark.metrics",
                                                                 "training.teacher", "distill.losses.0.params"]))
def test_yaml_alias_bombs_are_refused_quickly(levels, width, where):
    lines = ['a0: &a0 ["lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    section, *rest = where.split(".")
    body = {"data": "data:\n  prefix: ", "distill": "distill:\n  losses: ", "benchmark": "benchmark:\n  metrics: ",
            "training": "training:\n  teacher: "}[section]
    if where == "distill.losses.0.params":
        body = "distill:\n  losses:\n    - name: vanilla_kl\n      params: {temperature: "
    text = "\n".join(lines) + "\n" + body + f"*a{levels - 1}" + ("}" if body.endswith("{temperature: ") else "") + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.yaml"
        path.write_text(text)
        with pytest.raises(UserError):  # never a valid config: the value is a list of lists where the key wants else
            assert_config_or_one_line(path)
            raise UserError("refused inside assert_config_or_one_line")  # reached only if it loaded (it cannot)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "-inf", "1e999"])  # floats dump as .nan/.inf
@pytest.mark.parametrize("key", ["training.teacher.learning_rate", "teacher.arch.dropout", "benchmark.length_penalty",
                                 "distill.ce_weight", "distill.losses.0.weight", "data.split_ratios.0",
                                 "training.student.adam_betas.1", "benchmark.confidence"])
def test_every_float_is_finite(key, value, tmp_path):
    data = copy.deepcopy(TINY_CONFIG)
    data["training"]["student"]["adam_betas"] = [0.9, 0.999]
    data = plant(data, tuple(int(k) if k.isdigit() else k for k in key.split(".")), value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="must be a finite number"):
        load_config(path)


@pytest.mark.parametrize("value", ["a\x00b", "z" * 256 + "/t.csv", "/" + "y" * 5000, "", 5, ["a"]])
@pytest.mark.parametrize("key", [("data", "train_file"), ("data", "test_file"), ("teacher", "tokenizer", "path")])
def test_hostile_paths_are_a_config_or_one_line(key, value, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(plant(copy.deepcopy(FILE_DATA), key, value)))
    assert_config_or_one_line(path)
