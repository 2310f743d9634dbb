"""Config parsing and validation: one schema for JSON and YAML, one-line errors naming file and key."""
from __future__ import annotations

import pytest

from settings import DEMO_CONFIG, Config, load_config, to_dict
from settings.reference import reference_markdown
from utils.errors import UserError


def test_demo_config_loads_and_matches_its_documented_shape():
    cfg = load_config(DEMO_CONFIG)
    assert isinstance(cfg, Config)
    assert cfg.teacher.init == "scratch" and cfg.teacher.arch.type == "bart"
    assert cfg.data.synthetic.task == "polite_rewrite"
    assert cfg.distill.losses[0].name == "vanilla_kl" and cfg.distill.losses[0].params == {"temperature": 2.0}


def test_json_and_yaml_give_the_same_config(tiny_config_dict, write_config):
    a = load_config(write_config(tiny_config_dict, "c.json"))
    b = load_config(write_config(tiny_config_dict, "c.yaml"))
    assert to_dict(a) == to_dict(b)


def test_unknown_key_names_file_key_and_suggestion(tiny_config_dict, write_config):
    tiny_config_dict["training"]["student"]["lerning_rate"] = 1e-3
    path = write_config(tiny_config_dict)
    with pytest.raises(UserError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "training.student.lerning_rate" in msg and "did you mean 'learning_rate'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("section,key,value,expect", [
    ("training", "seed", "abc", "training.seed: expected int, got str"),
    ("data", "max_source_length", 0, "data.max_source_length: must be > 0"),
    ("data", "split_ratios", [0.5, 0.5], "data.split_ratios"),
    ("benchmark", "num_beams", 1.5, "benchmark.num_beams: expected int"),
    ("training", "precision", "fp8", "training.precision: 'fp8' is not one of"),
    ("distill", "ce_weight", -1, "distill.ce_weight: must be >= 0"),
])
def test_wrong_type_or_range_is_one_line(tiny_config_dict, write_config, section, key, value, expect):
    tiny_config_dict[section][key] = value
    with pytest.raises(UserError, match=expect.replace("[", r"\[").replace("(", r"\(")) as e:
        load_config(write_config(tiny_config_dict))
    assert "\n" not in str(e.value)


def test_nested_range_errors_name_the_full_key(tiny_config_dict, write_config):
    tiny_config_dict["training"]["teacher"]["learning_rate"] = -1e-3
    with pytest.raises(UserError, match=r"training\.teacher\.learning_rate: must be > 0"):
        load_config(write_config(tiny_config_dict))
    tiny_config_dict["training"]["teacher"]["learning_rate"] = 1e-3
    tiny_config_dict["student"]["arch"]["heads"] = 5
    with pytest.raises(UserError, match=r"student\.arch\.heads: d_model 32 is not divisible by heads 5"):
        load_config(write_config(tiny_config_dict))


def test_narrow_is_for_a_shrunk_student_and_names_its_key(tiny_config_dict, write_config):
    tiny_config_dict["student"]["narrow"] = {"d_model": 16}
    with pytest.raises(UserError, match=r"student\.narrow: narrows a student shrunk from its teacher \(init shrink\), "
                                        r"not init 'scratch'"):
        load_config(write_config(tiny_config_dict))
    tiny_config_dict["student"]["narrow"] = {"d_ff": 0}
    with pytest.raises(UserError, match=r"student\.narrow\.d_ff: must be > 0"):
        load_config(write_config(tiny_config_dict))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": {"seed": 1,}}')
    with pytest.raises(UserError, match=r"bad.json: malformed JSON at line 1"):
        load_config(bad)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("training:\n  seed: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml: malformed YAML"):
        load_config(bad_yaml)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(top)


def test_set_overrides_parse_values_as_yaml(tiny_config_dict, write_config):
    cfg = load_config(write_config(tiny_config_dict), ["training.student.learning_rate=1e-4", "data.prefix=detoxify: ",
                                                       "benchmark.bad_phrases=[idiot, moron]", "training.seed=7"])
    assert cfg.training.student.learning_rate == 1e-4
    assert cfg.data.prefix == "detoxify: "  # kept as typed, not read as a YAML mapping
    assert cfg.benchmark.bad_phrases == ["idiot", "moron"]
    assert cfg.training.seed == 7
    cfg = load_config(write_config(tiny_config_dict), ['data.prefix="summarize: "'])
    assert cfg.data.prefix == "summarize: "


def test_set_override_errors_name_the_flag(tiny_config_dict, write_config):
    with pytest.raises(UserError, match=r"--set training\.sed=1: training\.sed: unknown key \(did you mean 'seed'"):
        load_config(write_config(tiny_config_dict), ["training.sed=1"])
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(write_config(tiny_config_dict), ["training.seed"])


def test_section_files_override_the_main_config(tiny_config_dict, write_config, tmp_path):
    student = tmp_path / "student.yaml"
    student.write_text("student:\n  init: pretrained\n  name_or_path: t5-small\n  tokenizer: {train: null}\n")
    cfg = load_config(write_config(tiny_config_dict), sections={"student": student})
    assert cfg.student.init == "pretrained" and cfg.student.name_or_path == "t5-small"
    bare = tmp_path / "teacher.json"
    bare.write_text('{"init": "pretrained", "name_or_path": "t5-base", "tokenizer": {"train": null}, '
                    '"arch": {"d_modle": 3}}')
    with pytest.raises(UserError, match=r"teacher.json: teacher\.arch\.d_modle: unknown key"):
        load_config(write_config(tiny_config_dict), sections={"teacher": bare})


def test_loss_options_may_sit_beside_name_and_weight(tiny_config_dict, write_config):
    tiny_config_dict["distill"]["losses"] = [{"name": "vanilla_kl", "weight": 0.7, "params": {"temperature": 3}},
                                             {"name": "vanilla_kl", "temperature": 1.0}]
    cfg = load_config(write_config(tiny_config_dict))
    assert [s.params for s in cfg.distill.losses] == [{"temperature": 3}, {"temperature": 1.0}]


def test_pretrained_model_needs_a_name(tiny_config_dict, write_config):
    tiny_config_dict["teacher"] = {"init": "pretrained"}
    with pytest.raises(UserError, match=r"teacher\.name_or_path: init 'pretrained' needs name_or_path"):
        load_config(write_config(tiny_config_dict))


def test_relative_data_paths_resolve_against_the_config_directory(tiny_config_dict, write_config, tmp_path):
    (tmp_path / "d.csv").write_text("source,target\na,b\n")
    tiny_config_dict["data"] = {"train_file": "d.csv", "max_source_length": 32, "max_target_length": 32}
    cfg = load_config(write_config(tiny_config_dict))
    assert cfg.data.train_file == str(tmp_path / "d.csv")


def test_reference_documents_every_field():
    text = reference_markdown()
    for key in ("`learning_rate`", "`gradient_accumulation_steps`", "`target_column`", "`bad_phrases`",
                "`ce_weight`", "#### `training.student`", "#### `data.synthetic`"):
        assert key in text


def test_readme_config_reference_is_current():
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    section = readme[readme.index(start) + len(start):readme.index(end)]
    assert section == reference_markdown(), "regenerate the README's config reference (see the README)"


def test_example_configs_load_and_their_local_paths_exist(shared):
    from conftest import ROOT
    for path in sorted((ROOT / "configs").rglob("*.*")):
        if path.parent.name == "studies" and not path.stem.endswith("_base"):
            continue  # a study file, not a project config (tests/test_study.py loads them)
        cfg = load_config(path)
        for f in (cfg.data.train_file, cfg.teacher.tokenizer.path, cfg.student.tokenizer.path):
            if f:
                assert (ROOT / f).exists() or __import__("pathlib").Path(f).exists(), (path, f)


def test_yaml_exponent_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  student:\n    learning_rate: 5e-5\n")
    assert load_config(path).training.student.learning_rate == 5e-5


def test_lengths_must_fit_a_scratch_bart_position_table(tiny_config_dict, write_config):
    tiny_config_dict["benchmark"]["max_new_tokens"] = 64  # + the decoder start token > 64 positions
    with pytest.raises(UserError, match=r"teacher.arch.max_positions: 64 positions cannot hold "
                                        r"benchmark.max_new_tokens \(65\)"):
        load_config(write_config(tiny_config_dict))


def test_metric_for_best_is_checked_before_training(tiny_config_dict, write_config):
    tiny_config_dict["training"]["student"]["metric_for_best"] = "rougel"
    with pytest.raises(UserError, match=r"training.student.metric_for_best: 'rougel' is not one of 'loss', 'rouge1'"):
        load_config(write_config(tiny_config_dict))


def test_a_config_that_is_not_utf8(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("data:\n  prefix: \"d\xe9toxifier: \"\n".encode("cp1252"))
    with pytest.raises(UserError, match=r"c.yaml: not UTF-8 text \(byte 0xe9 at position \d+\); save the config"):
        load_config(path)


def test_the_copy_warm_up_is_refused_with_a_teacher_cache(tiny_config_dict, write_config):
    """The cache holds the teacher at the training pairs; a (source, source) copy has no entry."""
    tiny_config_dict["training"]["student"]["autoencode_steps"] = 10
    tiny_config_dict["distill"]["teacher_cache"] = {"top_k": 8}
    with pytest.raises(UserError, match=r"training.student.autoencode_steps: the teacher cache holds .* set it to 0 "
                                        r"or drop distill.teacher_cache") as e:
        load_config(write_config(tiny_config_dict))
    assert "\n" not in str(e.value)
    tiny_config_dict["training"]["teacher"]["autoencode_steps"] = 10  # the teacher's own warm-up is fine
    tiny_config_dict["training"]["student"]["autoencode_steps"] = 0
    assert load_config(write_config(tiny_config_dict)).training.teacher.autoencode_steps == 10


@pytest.mark.parametrize("params", ["0", True, [1, 2], 3.5])
def test_loss_params_that_are_not_a_mapping_are_one_line(tiny_config_dict, write_config, params):
    tiny_config_dict["distill"]["losses"] = [{"name": "vanilla_kl", "weight": 0.5, "params": params}]
    with pytest.raises(UserError, match=r"distill.losses\[0\].params: expected a mapping of loss options, got ") as e:
        load_config(write_config(tiny_config_dict))
    assert "\n" not in str(e.value)
