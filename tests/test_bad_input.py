"""Bad input at the CLI (issue 4, item 7).

Every case below sets up one real mistake (a malformed file, a wrong key, a truncated
checkpoint, a hub name while offline ...) and runs the CLI on it. Each must end the same way:

* exit code 2;
* stderr is exactly one line, starting with ``error: ``, that names the problem and the fix
  (each case asserts a distinctive fragment of both);
* no ``Traceback`` anywhere in stderr;
* for the cases that could damage earlier results, every file and directory of the earlier run
  is unchanged afterwards (content hashes and mtimes, nothing added or removed).

Most cases run in-process through ``main.main`` (subprocess start costs seconds of imports);
the ones marked ``subprocess=True`` run ``python main.py`` for real, offline, to prove that
nothing but the one line reaches the terminal. The cases that need trained models or
checkpoints share one tiny ``full_pipeline`` run (module scope) and work on copies of it when
they could change it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import pytest
import yaml

from conftest import ROOT, TINY_CONFIG

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
STUDENT_CKPT = "checkpoints/student/step_00000006.pt"


def base_config() -> dict:
    """TINY_CONFIG with a cheaper benchmark (the shared run below takes seconds)."""
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["benchmark"].update(max_samples=4, latency_samples=0)
    return cfg


@dataclass
class PrevRun:
    config: Path  # the config it was trained with
    out: Path     # its output_dir: teacher/ student/ checkpoints/ reports


@pytest.fixture(scope="module")
def prev_run(tmp_path_factory) -> PrevRun:
    """One successful full_pipeline run on tiny models, shared by the cases that need one."""
    from main import main
    tmp = tmp_path_factory.mktemp("prev_run")
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(base_config()))
    out = tmp / "run"
    assert main(["--config", str(cfg), "--output_dir", str(out)]) == 0
    assert (out / STUDENT_CKPT).is_file() and (out / "benchmark_results.json").is_file()
    return PrevRun(cfg, out)


# --------------------------------------------------------------------------- case setup helpers
class Ctx:
    """What a case's setup function gets: a scratch directory, the shared run, file writers."""

    def __init__(self, tmp: Path, request):
        self.tmp = tmp
        self._request = request
        self.protected: list[Path] = []
        self.cwd: Path | None = None

    @property
    def prev(self) -> PrevRun:
        return self._request.getfixturevalue("prev_run")

    @property
    def out(self) -> str:
        """A fresh output directory."""
        return str(self.tmp / "out")

    def config(self) -> dict:
        return base_config()

    def write_config(self, data: dict, name: str = "config.json") -> str:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(data) if name.endswith((".yaml", ".yml")) else json.dumps(data))
        return str(path)

    def write(self, name: str, content: str | bytes, encoding: str = "utf-8") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
        return str(path)

    def file_data_config(self, train_file: str, **data) -> dict:
        """The tiny config reading ``train_file`` instead of the synthetic task."""
        cfg = self.config()
        cfg["data"] = {"train_file": train_file, "max_source_length": 40, "max_target_length": 40, **data}
        return cfg

    def copy_run(self) -> Path:
        """A private copy of the shared run, protected: the case must leave it exactly as it was."""
        dst = self.tmp / "prev_copy"
        shutil.copytree(self.prev.out, dst)
        self.protect(dst)
        return dst

    def protect(self, path: Path) -> None:
        self.protected.append(Path(path))


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx], list]
    problem: str | tuple[str, ...]   # fragment naming the problem (a tuple: any of them)
    fix: str | tuple[str, ...]       # fragment naming the fix
    subprocess: bool = False         # run `python main.py` for real


CASES: list[Case] = []


def case(problem, fix, subprocess=False):
    def register(fn):
        CASES.append(Case(fn.__name__, fn, problem, fix, subprocess))
        return fn
    return register


# --------------------------------------------------------------------------- config files and flags
@case("malformed JSON", "at line 3, column")
def malformed_json(ctx):
    path = ctx.write("config.json", '{\n  "training": {\n    "seed": 1,,\n    "device": "cpu"\n  }\n}\n')
    return ["--config", path, "--output_dir", ctx.out]


@case("malformed YAML", "at line 3", subprocess=True)
def malformed_yaml(ctx):
    path = ctx.write("config.yaml", "training:\n  seed: 1\n   device: cpu\n")
    return ["--config", path, "--output_dir", ctx.out]


@case("training.student.lerning_rate: unknown key", "did you mean 'learning_rate'", subprocess=True)
def unknown_key_did_you_mean(ctx):
    cfg = ctx.config()
    cfg["training"]["student"]["lerning_rate"] = cfg["training"]["student"].pop("learning_rate")
    return ["--config", ctx.write_config(cfg, "config.yaml"), "--output_dir", ctx.out]


@case("training.teacher.batch_size", "expected int, got str 'sixteen'")
def wrong_type(ctx):
    cfg = ctx.config()
    cfg["training"]["teacher"]["batch_size"] = "sixteen"
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("training.student.learning_rate", "must be > 0, got -0.001")
def negative_learning_rate(ctx):
    cfg = ctx.config()
    cfg["training"]["student"]["learning_rate"] = -1e-3
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("training.teacher.learning_rate", "must be > 0, got 0")
def zero_learning_rate(ctx):
    cfg = ctx.config()
    cfg["training"]["teacher"]["learning_rate"] = 0
    return ["--config", ctx.write_config(cfg, "config.yaml"), "--output_dir", ctx.out]


@case("training.student.batch_size", "must be > 0, got 0")
def batch_size_zero(ctx):
    cfg = ctx.config()
    cfg["training"]["student"]["batch_size"] = 0
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("unknown loss 'vanila_kl'", "vanilla_kl")
def unknown_loss_name(ctx):
    cfg = ctx.config()
    cfg["distill"]["losses"][0]["name"] = "vanila_kl"
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("has no option 'temprature'", "its options:")
def bad_loss_option(ctx):
    cfg = ctx.config()
    cfg["distill"]["losses"] = [{"name": "vanilla_kl", "weight": 0.5, "temprature": 2.0}]
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("config file not found", "check the path given to --config")
def config_file_missing(ctx):
    return ["--config", str(ctx.tmp / "no_such_config.yaml"), "--output_dir", ctx.out]


@case("is a directory", "--config")
def config_file_is_a_directory(ctx):
    (ctx.tmp / "configs").mkdir()
    return ["--config", str(ctx.tmp / "configs"), "--output_dir", ctx.out]


@case("not UTF-8", "save the config as UTF-8")
def config_not_utf8(ctx):
    text = 'data:\n  prefix: "café – “rewrite”: "\n'
    return ["--config", ctx.write("config.yaml", text, encoding="cp1252"), "--output_dir", ctx.out]


@case(("is empty", "no data source"), "set data.train_file")
def empty_config_file(ctx):
    ctx.cwd = ctx.tmp  # the default output_dir (runs/default) lands here, not in the repository
    return ["--config", ctx.write("empty.yaml", "")]


@case("expected section.key=value", "--set training.seed=1")
def set_without_equals(ctx):
    return ["--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out, "--set", "training.seed"]


@case("training.sede: unknown key", "did you mean 'seed'")
def set_unknown_key(ctx):
    return ["--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out, "--set", "training.sede=3"]


@case("split_ratios", "summing to 1")
def split_ratios_not_summing_to_one(ctx):
    cfg = ctx.config()
    cfg["data"]["split_ratios"] = [0.7, 0.1, 0.1]
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("metric_for_best: 'rougel' is not one of", "'rougeL'")
def metric_for_best_typo(ctx):
    cfg = ctx.config()
    cfg["training"]["student"]["metric_for_best"] = "rougel"
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("64 positions cannot hold data.max_source_length (100)", "raise max_positions or lower")
def max_source_length_beyond_bart_positions(ctx):
    cfg = ctx.config()
    cfg["data"]["max_source_length"] = 100  # the scratch BARTs have max_positions 64
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("teacher.arch.d_modle: unknown key", "did you mean 'd_model'")
def teacher_config_file_typo(ctx):
    teacher = copy.deepcopy(ctx.config()["teacher"])
    teacher["arch"]["d_modle"] = teacher["arch"].pop("d_model")
    path = ctx.write_config({"teacher": teacher}, "teacher.yaml")
    return ["--config", ctx.write_config(ctx.config()), "--teacher_config", path, "--output_dir", ctx.out]


# --------------------------------------------------------------------------- numbers: non-finite, absurd, unseedable


def _set_case(problem, fix, key, value, yaml_text=None, subprocess=False):
    """A case that plants ``value`` at dotted ``key`` of the tiny config (written as YAML)."""
    def setup(ctx):
        cfg = ctx.config()
        node = cfg
        *path, last = key.split(".")
        for k in path:
            node = node.setdefault(k, {}) if not k.isdigit() else node[int(k)]
        node[last] = value
        return ["--config", ctx.write_config(cfg, "config.yaml"), "--output_dir", ctx.out]
    name = "set_" + key.replace(".", "_") + "_" + "".join(c if c.isalnum() else "_" for c in str(value))[:20]
    CASES.append(Case(name, setup, problem, fix, subprocess))


# 4: NaN passes every range check (nan < lo is False); every float of the schema must be finite
for _key in ("teacher.arch.dropout", "training.teacher.warmup_ratio", "benchmark.length_penalty",
             "distill.ce_weight", "training.student.learning_rate", "training.student.max_grad_norm",
             "benchmark.confidence"):
    _set_case(f"{_key}: must be a finite number, got nan", "must be a finite number", _key, float("nan"))
_set_case("training.teacher.weight_decay: must be a finite number, got inf", "finite", "training.teacher.weight_decay",
          float("inf"))
_set_case("distill.losses[0].temperature: must be a finite number", "finite number", "distill.losses.0.temperature",
          float("inf"))
_set_case("data.split_ratios[1]: must be a finite number", "finite", "data.split_ratios", [0.8, float("nan"), 0.1])
_set_case("training.student.learning_rate: must be a finite number, got '1e400'", "finite",
          "training.student.learning_rate", "1e400")
# valid but absurd: no run can allocate it, no RNG accepts it
_set_case("student.arch.d_model: 1,000,000,000 is beyond what any run can allocate", "must be <= 65,536",
          "student.arch.d_model", 10**9)
_set_case("training.teacher.batch_size", "must be <= 1,000,000", "training.teacher.batch_size", 10**12)
_set_case("teacher.arch.d_model: with d_ff 64 and 1000 + 1 layers the model has about", "lower d_model, d_ff or the layer",
          "teacher.arch", {"type": "t5", "d_model": 65536, "heads": 2, "d_ff": 64, "encoder_layers": 1000,
                           "decoder_layers": 1})
_set_case("data.max_source_length", "must be <=", "data.max_source_length", 2**40)
_set_case("training.seed: must be in [0, 4294967295]", "got -1", "training.seed", -1)
_set_case("training.seed: must be in [0, 4294967295]", "got 1099511627776", "training.seed", 2**40)
_set_case("data.synthetic.seed", "beyond any sensible setting", "data.synthetic.seed", 2**64)
_set_case("data.synthetic.seed: must be in [0, 4294967295]", "got 4294967296", "data.synthetic.seed", 2**32)
_set_case("training.teacher.max_steps", "beyond any sensible setting", "training.teacher.max_steps", 10**30)
# 10: output paths that are empty
_set_case("training.checkpoint_dir: is empty", "give a directory", "training.checkpoint_dir", " ")
# benchmark settings that name files outside the run
_set_case("benchmark.models[0].name", "no '/'", "benchmark.models", [{"name": "../../escape", "path": "x"}])
_set_case("benchmark.models: two models share a name (b)", "each needs its own", "benchmark.models",
          [{"name": "b", "path": "x"}, {"name": "b", "path": "y"}])
_set_case("benchmark.bad_phrases: an empty phrase blocks nothing", "remove it", "benchmark.bad_phrases", ["idiot", " "])
_set_case("benchmark.metrics: ['rouge', 'rouge'] names one twice", "list each once", "benchmark.metrics",
          ["rouge", "rouge"])


@case("training.output_dir: is empty", "give a directory (default runs/default)")
def output_dir_flag_empty(ctx):
    return ["--mode", "train_teacher", "--config", ctx.write_config(ctx.config()), "--output_dir", ""]


@case("--set training.output_dir=: training.output_dir: is empty", "give a directory")
def output_dir_set_empty(ctx):
    return ["--mode", "train_teacher", "--config", ctx.write_config(ctx.config()), "--set", "training.output_dir="]


@case(("config.yaml: training.student.lerning_rate: unknown key",), "did you mean 'learning_rate'")
def typo_in_the_file_is_blamed_on_the_file_not_on_output_dir(ctx):
    cfg = ctx.config()
    cfg["training"]["student"]["lerning_rate"] = cfg["training"]["student"].pop("learning_rate")
    return ["--config", ctx.write_config(cfg, "config.yaml"), "--output_dir", ctx.out, "--set", "training.seed=3"]


@case("--log_dir ' ': training.log_dir: is empty", "give a directory")
def log_dir_flag_blamed_by_its_name(ctx):
    return ["--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out, "--log_dir", " "]


# --------------------------------------------------------------------------- YAML/JSON that parse but are no config
@case("more than 100,000 values (YAML aliases expanded)", "check for aliases")
def billion_laughs(ctx):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines += ["data:", "  prefix: *a9"]
    return ["--config", ctx.write("laughs.yaml", "\n".join(lines) + "\n"), "--output_dir", ctx.out]


@case("nested", "levels deep")
def deeply_nested_yaml(ctx):
    return ["--config", ctx.write("deep.yaml", "data:\n  prefix: " + "[" * 3000 + "]" * 3000 + "\n"),
            "--output_dir", ctx.out]


@case("nested", "levels deep")
def deeply_nested_json(ctx):
    return ["--config", ctx.write("deep.json", '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}"),
            "--output_dir", ctx.out]


@case("nested", "levels deep")
def deeply_indented_yaml(ctx):
    return ["--config", ctx.write("indent.yaml", "data:\n" + "".join(" " * (2 * i) + f"k{i}:\n" for i in range(1, 400))),
            "--output_dir", ctx.out]


@case("Exceeds the limit", "write a number of sensible size")
def integer_of_ten_thousand_digits(ctx):
    return ["--config", ctx.write("big.json", '{"training": {"seed": ' + "9" * 10_000 + "}}"), "--output_dir", ctx.out]


@case("training.True: keys must be strings, got bool", "YAML reads yes/no/on/off")
def yaml_boolean_key(ctx):
    return ["--config", ctx.write("on.yaml", "training:\n  on: cpu\n"), "--output_dir", ctx.out]


@case("data.1: keys must be strings, got int", "write the key as quoted text")
def yaml_integer_key(ctx):
    return ["--config", ctx.write("int.yaml", "data:\n  1: prefix\n"), "--output_dir", ctx.out]


@case("distill.losses[0].3: keys must be strings", "quoted text")
def integer_key_in_a_loss(ctx):
    return ["--config", ctx.write("loss.yaml", "distill:\n  losses:\n    - name: vanilla_kl\n      3: 2.0\n"),
            "--output_dir", ctx.out]


@case("data.prefix: expected str, got list", "expected str")
def a_list_where_text_belongs(ctx):
    return ["--config", ctx.write("list.yaml", "data:\n  prefix: [a, b]\n"), "--output_dir", ctx.out]


@case("data.prefix: expected str, got date", "expected str")
def a_yaml_date_where_text_belongs(ctx):
    return ["--config", ctx.write("date.yaml", "data:\n  prefix: 2024-01-01\n"), "--output_dir", ctx.out]


# --------------------------------------------------------------------------- data
GOOD_ROWS = "source,target\n" + "".join(f"you are a stupid person {i},you are a person {i}\n" for i in range(12))


@case("data.train_file: file not found", "check the path", subprocess=True)
def missing_data_file(ctx):
    cfg = ctx.file_data_config(str(ctx.tmp / "no_such_data.csv"))
    return ["--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("no column 'source'", "set data.source_column")
def missing_column(ctx):
    data = ctx.write("data.csv", GOOD_ROWS.replace("source,target", "src,target", 1))
    return ["--config", ctx.write_config(ctx.file_data_config(data)), "--output_dir", ctx.out]


@case("is empty", "check data.")
def empty_dataset_after_filtering(ctx):
    data = ctx.write("data.csv", "source,target\n" + ' ,\n,"  "\n"\t",\n' * 4)
    return ["--config", ctx.write_config(ctx.file_data_config(data)), "--output_dir", ctx.out]


@case("every value of the target column 'target' is empty", "check data.target_column")
def all_targets_empty(ctx):
    data = ctx.write("data.csv", "source,target\n" + "".join(f"input number {i},  \n" for i in range(12)))
    return ["--config", ctx.write_config(ctx.file_data_config(data)), "--output_dir", ctx.out]


@case("every value of the source column 'source' is empty", "check data.source_column")
def all_sources_empty(ctx):
    data = ctx.write("data.csv", "source,target\n" + "".join(f",output number {i}\n" for i in range(12)))
    return ["--config", ctx.write_config(ctx.file_data_config(data)), "--output_dir", ctx.out]


@case("no row has both a source", "check data.source_column and data.target_column")
def no_row_with_source_and_target(ctx):
    data = ctx.write("data.csv", "source,target\n" + "".join(f"input {i},\n,output {i}\n" for i in range(6)))
    return ["--config", ctx.write_config(ctx.file_data_config(data)), "--output_dir", ctx.out]


@case("is not valid utf-8 (byte 0x", "set data.encoding, e.g. cp1252", subprocess=True)
def undecodable_text_without_encoding(ctx):
    rows = "".join(f"“you are a stupid {i}” said the café owner,“you are unwise {i}” – café\n" for i in range(12))
    data = ctx.write("news_summary.csv", "source,target\n" + rows, encoding="cp1252")
    return ["--config", ctx.write_config(ctx.file_data_config(data)), "--output_dir", ctx.out]


@case("unknown encoding 'utf-9'", "use e.g. utf-8 or cp1252")
def unknown_encoding(ctx):
    data = ctx.write("data.csv", GOOD_ROWS)
    return ["--config", ctx.write_config(ctx.file_data_config(data, encoding="utf-9")), "--output_dir", ctx.out]


@case("cannot tell the format", "set data.format")
def unsupported_data_extension(ctx):
    data = ctx.write("data.xlsx", b"PK\x03\x04 not really a spreadsheet")
    return ["--config", ctx.write_config(ctx.file_data_config(data)), "--output_dir", ctx.out]


@case("malformed JSON on line 2", "one complete object per line")
def malformed_jsonl_data(ctx):
    data = ctx.write("data.jsonl", '{"source": "a b", "target": "c"}\n{"source": "d e", "target": \n')
    return ["--config", ctx.write_config(ctx.file_data_config(data)), "--output_dir", ctx.out]


@case("data.dataset_name 'abisee/cnn_dailymail'", "set data.train_file")
def hub_dataset_while_offline(ctx):
    cfg = ctx.config()
    cfg["data"] = {"dataset_name": "abisee/cnn_dailymail", "dataset_config": "3.0.0", "source_column": "article",
                   "target_column": "highlights", "max_source_length": 40, "max_target_length": 40}
    return ["--mode", "train_teacher", "--config", ctx.write_config(cfg), "--output_dir", ctx.out]


# --------------------------------------------------------------------------- models, devices, directories
@case("not cached and the model hub cannot be reached", "give its local directory", subprocess=True)
def hub_model_while_offline(ctx):
    cfg = ctx.config()
    cfg["teacher"] = {"init": "pretrained", "name_or_path": "facebook/bart-large-cnn"}
    return ["--mode", "train_teacher", "--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("no CUDA GPU is available", "use --device cpu", subprocess=True)
def device_cuda_without_gpu(ctx):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    return ["--mode", "train_teacher", "--config", ctx.write_config(ctx.config()), "--device", "cuda",
            "--output_dir", ctx.out]


@case("is a file, not a directory", "choose another directory")
def unwritable_output_dir(ctx):
    blocker = ctx.write("a_regular_file", "not a directory\n")
    ctx.protect(Path(blocker))
    return ["--mode", "train_teacher", "--config", ctx.write_config(ctx.config()),
            "--output_dir", str(Path(blocker) / "run")]


@case("tokenizer.path", "point it at a tokenizer")
def tokenizer_path_missing(ctx):
    cfg = ctx.config()
    cfg["teacher"]["tokenizer"] = {"path": str(ctx.tmp / "no_such_tokenizer")}
    return ["--mode", "train_teacher", "--config", ctx.write_config(cfg), "--output_dir", ctx.out]


@case("embedding rows", "use the model's own tokenizer")
def tokenizer_larger_than_model_vocabulary(ctx):
    from transformers import AutoTokenizer
    student = ctx.tmp / "student_with_more_tokens"
    shutil.copytree(ctx.prev.out / "student" / "final", student)
    tok = AutoTokenizer.from_pretrained(student)
    assert tok.add_tokens(["zzqx", "qqzy", "xxqz"]) == 3
    tok.save_pretrained(student)
    return ["--mode", "benchmark", "--config", str(ctx.prev.config), "--student_path", str(student),
            "--output_dir", ctx.out]


@case("another tokenizer", "remove distill.teacher_cache")
def teacher_student_vocabulary_mismatch(ctx):
    cfg = ctx.config()
    cfg["student"]["tokenizer"] = {"train": {"vocab_size": 100}}  # the teacher's has 128 tokens
    cfg["distill"]["teacher_cache"] = {"top_k": 4}  # a teacher of another tokenizer runs live
    return ["--mode", "distill_student", "--config", ctx.write_config(cfg),
            "--teacher_path", str(ctx.prev.out / "teacher" / "final"), "--output_dir", ctx.out]


@case("another tokenizer", "remove distill.teacher_cache")
def vocabulary_mismatch_with_overwrite_keeps_the_earlier_student(ctx):
    run = ctx.copy_run()  # --overwrite may replace the student only once the new one can be trained
    cfg = ctx.config()
    cfg["student"]["tokenizer"] = {"train": {"vocab_size": 100}}
    cfg["distill"]["teacher_cache"] = {"top_k": 4}
    return ["--mode", "distill_student", "--config", ctx.write_config(cfg), "--output_dir", str(run), "--overwrite"]


@case("a resume cannot change", "student.arch.d_model: 32 -> 64")
def checkpoint_of_another_architecture(ctx):
    run = ctx.copy_run()
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--resume_from_checkpoint", str(run / STUDENT_CKPT), "--set", "student.arch.d_model=64"]


@case("may be truncated or corrupt", "resume from an older checkpoint", subprocess=True)
def truncated_checkpoint(ctx):
    run = ctx.copy_run()
    ckpt = run / STUDENT_CKPT
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:len(data) // 2])
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--resume_from_checkpoint", str(ckpt)]


@case(("truncated or corrupt", "cannot be read"), "--overwrite")
def auto_resume_with_only_corrupt_checkpoints(ctx):
    run = ctx.copy_run()
    shutil.rmtree(run / "student" / "final")  # unfinished: a finished stage needs no checkpoint to resume
    for ckpt in (run / "checkpoints" / "student").glob("step_*.pt"):
        ckpt.write_bytes(b"\x00" * 100)
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--resume_from_checkpoint", "auto"]


@case("is a student checkpoint, not a teacher one", "pass the teacher's checkpoint or 'auto'")
def checkpoint_of_the_wrong_role(ctx):
    return ["--mode", "train_teacher", "--config", str(ctx.prev.config), "--output_dir", ctx.out,
            "--resume_from_checkpoint", str(ctx.prev.out / STUDENT_CKPT)]


@case("is not a checkpoint written by this tool", "pass a step_*.pt file or 'auto'")
def checkpoint_that_is_not_ours(ctx):
    import torch
    path = ctx.tmp / "model.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    return ["--mode", "train_teacher", "--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out,
            "--resume_from_checkpoint", str(path)]


@case("no such checkpoint file", "or 'auto'")
def resume_from_a_nonexistent_checkpoint(ctx):
    return ["--mode", "train_teacher", "--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out,
            "--resume_from_checkpoint", str(ctx.tmp / "step_00000099.pt")]


@case("not a saved model directory (no config.json)", "give the directory written by train_teacher")
def teacher_path_empty_directory(ctx):
    (ctx.tmp / "empty_teacher").mkdir()
    return ["--mode", "distill_student", "--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out,
            "--teacher_path", str(ctx.tmp / "empty_teacher")]


@case("cannot load a seq2seq model", "give a directory written by save_pretrained")
def teacher_path_without_weights(ctx):
    teacher = ctx.tmp / "teacher_without_weights"
    shutil.copytree(ctx.prev.out / "teacher" / "final", teacher)
    (teacher / "model.safetensors").unlink()
    return ["--mode", "distill_student", "--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out,
            "--teacher_path", str(teacher)]


@case("benchmark.models 'baseline'", "give the directory written by train_teacher")
def benchmark_extra_model_missing(ctx):
    cfg = ctx.config()
    cfg["benchmark"]["models"] = [{"name": "baseline", "path": str(ctx.tmp / "no_such_model")}]
    return ["--mode", "benchmark", "--config", ctx.write_config(cfg), "--output_dir", ctx.out,
            "--student_path", str(ctx.prev.out / "student" / "final")]


@case("cannot load a seq2seq model", "give a directory written by save_pretrained", subprocess=True)
def teacher_path_with_truncated_safetensors(ctx):
    teacher = ctx.tmp / "truncated_teacher"
    shutil.copytree(ctx.prev.out / "teacher" / "final", teacher)
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    return ["--mode", "distill_student", "--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out,
            "--teacher_path", str(teacher)]


@case("cannot load a seq2seq model", "give a directory written by save_pretrained")
def student_path_with_garbage_safetensors(ctx):
    student = ctx.tmp / "garbage_student"
    shutil.copytree(ctx.prev.out / "student" / "final", student)
    (student / "model.safetensors").write_bytes(b"\xff" * 64)
    return ["--mode", "benchmark", "--config", ctx.write_config(ctx.config()), "--output_dir", ctx.out,
            "--student_path", str(student)]


@case("written by another version of this tool (no optimizer", "start the stage over with --overwrite")
def checkpoint_of_another_format_version(ctx):
    import torch
    run = ctx.copy_run()
    ckpt = torch.load(run / STUDENT_CKPT, weights_only=True)
    del ckpt["optimizer"], ckpt["crc32"]  # as an older version wrote it: no optimizer state, no checksum
    torch.save(ckpt, run / STUDENT_CKPT)
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--resume_from_checkpoint", str(run / STUDENT_CKPT)]


@case("does not match this version's format", "start the stage over with --overwrite")
def checkpoint_with_a_foreign_state(ctx):
    import torch

    from checkpoints import contents_crc
    run = ctx.copy_run()
    ckpt = torch.load(run / STUDENT_CKPT, weights_only=True)
    ckpt["state"]["future_field"] = 1
    ckpt["crc32"] = contents_crc({k: v for k, v in ckpt.items() if k != "crc32"})  # as a newer version writes it
    torch.save(ckpt, run / STUDENT_CKPT)
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--resume_from_checkpoint", str(run / STUDENT_CKPT)]


# An output directory that already holds a run: refused unless resuming or --overwrite, nothing changed.
@case("already holds a teacher run", "--overwrite", subprocess=True)
def output_dir_holds_a_teacher_run(ctx):
    return ["--mode", "train_teacher", "--config", str(ctx.prev.config), "--output_dir", str(ctx.copy_run())]


@case("already holds a student run", "--overwrite")
def output_dir_holds_a_student_run(ctx):
    return ["--mode", "distill_student", "--config", str(ctx.prev.config), "--output_dir", str(ctx.copy_run())]


@case("already holds benchmark reports", "--overwrite")
def benchmark_into_a_directory_with_reports(ctx):
    run = ctx.copy_run()
    return ["--mode", "benchmark", "--config", str(ctx.prev.config), "--output_dir", str(run),
            "--student_path", str(run / "student" / "final")]


@case("already holds benchmark reports", "--overwrite")
def full_pipeline_into_a_finished_run(ctx):
    return ["--config", str(ctx.prev.config), "--output_dir", str(ctx.copy_run())]


# --------------------------------------------------------------------------- running and checking
def run_subprocess(argv, cwd=None):
    env = dict(os.environ, **OFFLINE)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=300, check=False)  # timeout: a hang guard
    return proc.returncode, proc.stderr


def run_in_process(argv, capsys, monkeypatch, cwd=None):
    """main.main(argv); an exception escaping it is what a user would see as a traceback (exit 1)."""
    from main import main
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    if cwd:
        monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = main(list(map(str, argv)))
    except SystemExit as e:  # argparse
        code = e.code
    except Exception as e:  # noqa: BLE001 - any escaping exception is the failure being tested
        err = capsys.readouterr().err
        return 1, f"{err}Traceback (most recent call last):\n  [in-process] {type(e).__name__}: {e}\n"
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under ``root`` (or the file itself): kind, size, mtime, content hash."""
    paths = [root] + (sorted(root.rglob("*")) if root.is_dir() else [])
    out = {}
    for p in paths:
        rel = str(p.relative_to(root)) if p != root else "."
        if p.is_dir():
            out[rel] = ("dir",)
        else:
            st = p.stat()
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def changes(root: Path, before: dict, after: dict) -> list[str]:
    out = []
    for rel in sorted(set(before) | set(after)):
        a, b = before.get(rel), after.get(rel)
        if a == b:
            continue
        if a is None:
            out.append(f"{root}: {rel} was created")
        elif b is None:
            out.append(f"{root}: {rel} was removed")
        elif a[0] == b[0] == "file" and a[3] == b[3]:
            out.append(f"{root}: {rel} was rewritten (same content, new mtime)")
        elif a[0] == b[0] == "file" and b[1] > a[1] and _sha_of_head(root / rel, a[1]) == a[3]:
            out.append(f"{root}: {rel} was appended to ({b[1] - a[1]} bytes)")
        else:
            out.append(f"{root}: {rel} was modified")
    return out


def _sha_of_head(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


def _has_any(text: str, fragments) -> bool:
    return any(f in text for f in ((fragments,) if isinstance(fragments, str) else fragments))


def error_problems(code, stderr: str, problem, fix) -> list[str]:
    """Everything wrong with how the CLI reported bad input (empty when it did it right)."""
    out = []
    if code != 2:
        out.append(f"exit code {code}, expected 2")
    if "Traceback" in stderr:
        out.append("a traceback reached stderr")
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    if len(lines) != 1:
        out.append(f"stderr has {len(lines)} lines, expected exactly one 'error: ' line")
    if len(errors) != 1:
        out.append(f"{len(errors)} lines start with 'error: ', expected one")
    message = errors[0] if errors else ""
    if not _has_any(message, problem):
        out.append(f"the error line does not name the problem (expected {problem!r})")
    if not _has_any(message, fix):
        out.append(f"the error line does not name the fix (expected {fix!r})")
    return out


def test_at_least_30_distinct_cases():
    assert len(CASES) >= 70 and len({c.id for c in CASES}) == len(CASES)
    assert sum(c.subprocess for c in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_helpful_line(case: Case, tmp_path, request, capsys, monkeypatch):
    ctx = Ctx(tmp_path, request)
    argv = case.setup(ctx)
    before = {root: snapshot(root) for root in ctx.protected}
    if case.subprocess:
        code, stderr = run_subprocess(argv, ctx.cwd)
    else:
        code, stderr = run_in_process(argv, capsys, monkeypatch, ctx.cwd)
    problems = error_problems(code, stderr, case.problem, case.fix)
    for root, snap in before.items():
        problems += changes(root, snap, snapshot(root))
    shown = "\n".join(stderr.strip().splitlines()[-15:])
    assert not problems, "\n".join(problems) + f"\n--- stderr (last lines) ---\n{shown}"
