"""The distillation study (python -m benchmark.study): split, style score, aggregation, resume, end to end."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.study import run_study
from benchmark.study.aggregate import System, SystemRun, aggregate
from benchmark.study.runs import RunFailed
from benchmark.study.split import read_split_file, study_split, write_split
from data_loader import Example
from metrics import compute_metrics
from metrics.style import StyleClassifier, nontoxic_pct
from settings import DataConfig
from utils.errors import UserError

TOXIC = ["you are a stupid idiot", "shut up you moron", "this is fucking crap", "what a damn loser you are",
         "go to hell you idiot", "your stupid fucking plan", "the moron ruined it again", "damn this crap idea"]
NEUTRAL = ["you are wrong", "please be quiet", "this is not good", "you did not win this time",
           "please leave me alone", "your plan is unwise", "the person ruined it again", "this idea is poor"]


# --------------------------------------------------------------------------- split
def _rows_tsv(path: Path, n_sources: int = 40) -> Path:
    """A ParaDetox-like TSV: a variable number of references per source; one source on two rows."""
    lines = ["toxic\tneutral1\tneutral2\tneutral3"]
    for i in range(n_sources):
        refs = [f"polite {i} a", f"polite {i} b", ""][: 1 + i % 3]
        lines.append("\t".join([f"toxic sentence {i}", *refs, *[""] * (3 - len(refs))]))
    lines.append("toxic sentence 5\tpolite 5 extra\t\t")  # the same source again: grouped with its first row
    path.write_text("\n".join(lines) + "\n")
    return path


def _data_cfg(path: Path) -> DataConfig:
    return DataConfig(train_file=str(path), source_column="toxic", target_column=["neutral1", "neutral2", "neutral3"])


def test_split_sizes_disjoint_all_references_deterministic(tmp_path):
    cfg = _data_cfg(_rows_tsv(tmp_path / "d.tsv"))
    split = study_split(cfg, test_sources=10, validation_sources=5, seed=3)
    assert [len(split[k]) for k in ("train", "validation", "test")] == [25, 5, 10]
    sources = [e.source for k in split for e in split[k]]
    assert len(sources) == len(set(sources)) == 40  # no source in two splits, none lost
    refs = {e.source: e.references for k in split for e in split[k]}
    assert refs["toxic sentence 5"] == ["polite 5 a", "polite 5 b", "polite 5 extra"]  # all references, grouped
    assert refs["toxic sentence 4"] == ["polite 4 a", "polite 4 b"] and refs["toxic sentence 3"] == ["polite 3 a"]
    assert study_split(cfg, 10, 5, 3) == split  # deterministic
    assert study_split(cfg, 10, 5, 4)["test"] != split["test"]  # the seed matters
    paths = write_split(split, tmp_path / "split")
    assert read_split_file(paths["test"]) == split["test"]
    assert write_split(split, tmp_path / "split") == paths  # the same split again: accepted
    with pytest.raises(UserError, match="holds another split"):
        write_split(study_split(cfg, 10, 5, 4), tmp_path / "split")
    with pytest.raises(UserError, match="not more than test_sources"):
        study_split(cfg, 30, 10, 0)


def test_split_of_paradetox(shared):
    cfg = _data_cfg(shared / "data/paradetox/paradetox.tsv")
    split = study_split(cfg, test_sources=1000, validation_sources=500, seed=0)
    assert len(split["test"]) == 1000 and len(split["validation"]) == 500
    import pandas as pd
    df = pd.read_csv(cfg.train_file, sep="\t", dtype=str, keep_default_na=False)
    by_source: dict[str, set] = {}
    for row in df.itertuples(index=False):
        by_source.setdefault(row.toxic.strip(), set()).update(r.strip() for r in row[1:] if r.strip())
    for e in split["test"]:
        assert set(e.references) == by_source[e.source]  # every reference of a test source is kept
    assert not {e.source for e in split["test"]} & {e.source for e in split["train"] + split["validation"]}


# --------------------------------------------------------------------------- style score
def test_style_classifier_separates_toxic_from_neutral():
    clf = StyleClassifier.fit(TOXIC, NEUTRAL)
    assert clf.toxic(["you stupid idiot", "shut up moron crap"]).all()
    assert clf.nontoxic(["please leave", "your plan is poor"]).all()
    assert clf.accuracy(TOXIC, NEUTRAL)["accuracy"] == 100.0
    assert nontoxic_pct(clf, ["you stupid idiot", "please be quiet", "this is not good", "damn crap"]) == 50.0


def test_style_accuracy_on_a_hand_made_case():
    class Fixed:  # P(toxic) given by the text itself
        def predict_proba(self, texts):
            p = np.array([float(t) for t in texts])
            return np.c_[1 - p, p]
    clf = StyleClassifier(Fixed())
    acc = clf.accuracy(["0.9", "0.2", "0.7"], ["0.1", "0.6", "0.3", "0.4", "0.51"])
    # toxic side: 2 of 3 called toxic; neutral side: 3 of 5 called non-toxic; (2 + 3) / 8
    assert acc["accuracy"] == pytest.approx(62.5)
    assert acc["toxic_recall"] == pytest.approx(200 / 3) and acc["neutral_recall"] == pytest.approx(60.0)
    assert (acc["n_toxic"], acc["n_neutral"]) == (3, 5)


# --------------------------------------------------------------------------- aggregation
def _toy_test():
    test = [Example(t, [n]) for t, n in zip(TOXIC, NEUTRAL)]
    train = [Example(t + " again", [n + " again"]) for t, n in zip(TOXIC, NEUTRAL)]
    return test, train


def test_aggregation_against_metrics_computed_directly():
    test, train = _toy_test()
    refs = [e.references for e in test]
    good, src = [e.references[0] for e in test], [e.source for e in test]
    half = [g if i % 2 else s for i, (g, s) in enumerate(zip(good, src))]
    other = [g if i % 3 else s for i, (g, s) in enumerate(zip(good, src))]
    systems = [System("copy_source", "trivial", {0: SystemRun(src)}),
               System("teacher", "teacher", {0: SystemRun(good, 10.0, 10.0)}),
               System("ce_only", "method", {0: SystemRun(src, 5.0, 10.0), 1: SystemRun(half, 4.0, 12.0)}),
               System("kd", "method", {0: SystemRun(good, 2.0, 10.0), 1: SystemRun(other, 5.0, 10.0)})]
    r = aggregate(systems, test, train, n_resamples=200, confidence=0.95)
    keys = {"sacrebleu": "sacrebleu", "chrf": "chrf", "rougeL": "rougeL"}
    direct = {n: [compute_metrics(p, refs) for p in ps] for n, ps in
              {"copy_source": [src], "teacher": [good], "ce_only": [src, half], "kd": [good, other]}.items()}
    for name, per_seed in direct.items():
        s = r["systems"][name]
        for k in keys:
            assert s["metrics"][k] == pytest.approx(np.mean([m[k] for m in per_seed]), abs=1e-9)
    style = StyleClassifier.fit([e.source for e in train], [n for e in train for n in e.references])
    assert r["systems"]["kd"]["metrics"]["style_nontoxic"] == pytest.approx(
        np.mean([nontoxic_pct(style, good), nontoxic_pct(style, other)]))
    assert r["systems"]["teacher"]["metrics"]["chrf"] == pytest.approx(100.0)
    assert r["systems"]["kd"]["retention_chrf_pct"] == pytest.approx(r["systems"]["kd"]["metrics"]["chrf"])
    assert r["systems"]["ce_only"]["speedup"] == pytest.approx(np.mean([10 / 5, 12 / 4]))
    assert r["systems"]["teacher"]["speedup"] == 1.0 and r["systems"]["copy_source"]["speedup"] is None
    d = r["vs_ce_only"]["kd"]
    for k in keys:  # mean over seeds of (method_seed - ce_only_seed)
        expect = np.mean([direct["kd"][i][k] - direct["ce_only"][i][k] for i in range(2)])
        assert d[k]["difference"] == pytest.approx(expect, abs=1e-9)
        assert d[k]["low"] <= d[k]["difference"] <= d[k]["high"]
    assert d["chrf"]["outcome"] == "helps" and d["chrf"]["low"] > 0
    assert "ce_only" not in r["vs_ce_only"]
    t = r["teacher_vs_trivial"]["copy_source"]["chrf"]
    assert t["outcome"] == "beats" and t["difference"] == pytest.approx(100 - direct["copy_source"][0]["chrf"])
    assert r["style_classifier"]["n_toxic"] == 8 and r["style_classifier"]["n_neutral"] == 8


def test_no_difference_is_said_so():
    test, train = _toy_test()
    preds = [e.references[0] if i % 2 else e.source for i, e in enumerate(test)]
    same = {0: SystemRun(preds, 1.0, 1.0)}
    systems = [System("teacher", "teacher", {0: SystemRun(preds, 1.0, 1.0)}), System("ce_only", "method", same),
               System("kd", "method", dict(same))]
    d = aggregate(systems, test, train, 100, 0.95)["vs_ce_only"]["kd"]
    for k, v in d.items():
        assert (v["difference"], v["low"], v["high"]) == (0, 0, 0) and v["outcome"] == "no significant difference"


# --------------------------------------------------------------------------- the study, runs mocked
def _study_files(tmp_path: Path, tiny: dict, methods: dict, seeds=(0,), **extra) -> Path:
    base = copy.deepcopy(tiny)
    base["data"]["synthetic"]["num_examples"] = 80
    base["benchmark"].update(latency_samples=2, bootstrap_samples=100, metrics=["rouge", "sacrebleu", "chrf"])
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    study = {"base_config": "base.yaml", "output_dir": str(tmp_path / "study"), "seeds": list(seeds),
             "test_sources": 12, "validation_sources": 6, "methods": methods, **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


class FakeRuns:
    """Stands in for `python main.py`: writes what a finished run leaves (model dir or benchmark files)."""

    def __init__(self, fail: str | None = None):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, command, log_path):
        out = Path(command[command.index("--output_dir") + 1])
        self.calls.append(out.name)
        if self.fail == out.name:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text("line 1\nerror: something broke\n")
            return 2
        if command[command.index("--mode") + 1] == "train_teacher":
            (out / "teacher" / "final").mkdir(parents=True)
            return 0
        test = read_split_file(Path(next(a.split("=", 1)[1] for a in command if a.startswith("data.test_file="))))
        names = ["teacher", "student", "copy_source", "delete_toxic_words"]
        names += ["student_ce"] if "training.baseline=true" in command else []
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            rows = [{"source": e.source, "references": e.references,
                     "prediction": e.source if name in ("copy_source", "student_ce") else e.references[0]} for e in test]
            (out / f"predictions_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        records = [{"name": n, "latency_p50_ms": 10.0 if n == "teacher" else 2.5} for n in names]
        (out / "benchmark_results.json").write_text(json.dumps({"models": records}))
        return 0


def test_resume_skips_finished_runs_and_runs_missing_ones(tmp_path, tiny_config_dict):
    methods = {"kd": ["distill.losses=[{name: vanilla_kl, weight: 0.5, temperature: 2.0}]"],
               "skew": ["distill.losses=[{name: skew_kl, weight: 0.5, temperature: 2.0}]"]}
    path = _study_files(tmp_path, tiny_config_dict, methods, seeds=(0, 1))
    fake = FakeRuns()
    r = run_study(path, launch=fake)
    assert fake.calls == ["teacher", "kd_seed0", "skew_seed0", "kd_seed1", "skew_seed1"]
    study = tmp_path / "study"
    assert (study / "study_table.md").is_file() and json.loads((study / "study_results.json").read_text())
    assert list(r["systems"]) == ["copy_source", "delete_toxic_words", "teacher", "ce_only", "kd", "skew"]
    assert r["systems"]["kd"]["speedup"] == 4.0 and r["vs_ce_only"]["kd"]["chrf"]["outcome"] == "helps"
    again = FakeRuns()
    run_study(path, launch=again)
    assert again.calls == []  # every run finished: all skipped
    assert "study run skew_seed1: skipped" in (study / "logs" / "study.log").read_text()
    (study / "runs" / "skew_seed0" / "benchmark_results.json").unlink()  # an interrupted run
    third = FakeRuns()
    run_study(path, launch=third)
    assert third.calls == ["skew_seed0"]
    edited = yaml.safe_load(path.read_text())
    edited["methods"]["skew"] = ["distill.losses=[{name: skew_kl, weight: 0.9, temperature: 2.0}]"]
    path.write_text(yaml.safe_dump(edited))
    with pytest.raises(UserError, match="skew_seed0: .* was run with other settings"):
        run_study(path, launch=FakeRuns())


def test_an_edited_base_config_is_refused_by_the_runs_it_shapes(tmp_path, tiny_config_dict):
    path = _study_files(tmp_path, tiny_config_dict, {"kd": []})
    run_study(path, launch=FakeRuns())
    record = tmp_path / "study" / "runs" / "kd_seed0" / "study_run.json"
    old = json.loads(record.read_text())
    assert old["settings"]["training"]["student"]["max_steps"] == tiny_config_dict["training"]["student"]["max_steps"]
    record.write_text(json.dumps({"args": old["args"]}))  # a record from before settings were recorded ...
    again = FakeRuns()
    run_study(path, launch=again)
    assert again.calls == [] and json.loads(record.read_text()) == old  # ... is accepted and completed
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["training"]["student"]["learning_rate"] = 0.123  # shapes the students, not the teacher
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    with pytest.raises(UserError, match=r"study run kd_seed0: .* was run with other settings \(its base config "
                                        r"changed: training.student.learning_rate .* -> 0.123\); delete that"):
        run_study(path, launch=FakeRuns())  # the teacher's record passed: its settings did not change


def test_commands_resume_and_host_the_baseline(tmp_path, tiny_config_dict):
    from benchmark.study.runs import plan
    from benchmark.study.config import load_study
    from benchmark.study.split import data_overrides
    path = _study_files(tmp_path, tiny_config_dict, {"a": [], "b": ["distill.ce_weight=0.3"]}, seeds=(0, 7))
    study, base = load_study(path)
    sets = data_overrides({k: tmp_path / f"{k}.jsonl" for k in ("train", "validation", "test")})
    runs = plan(study, base, tmp_path / "s", sets)
    assert [r.name for r in runs] == ["teacher", "a_seed0", "b_seed0", "a_seed7", "b_seed7"]
    for r in runs:
        assert r.command[-2:] == ["--resume_from_checkpoint", "auto"] and sets[0] in r.command
    assert runs[0].command[runs[0].command.index("--mode") + 1] == "train_teacher"
    for r in runs[1:]:
        c = r.command
        assert c[c.index("--mode") + 1] == "full_pipeline" and f"training.seed={r.seed}" in c
        assert c[c.index("--teacher_path") + 1] == str(tmp_path / "s" / "teacher" / "teacher" / "final")
        assert (f"training.baseline={'true' if r.method == 'a' else 'false'}" in c) and r.hosts_ce_only == (r.method == "a")
    assert "distill.ce_weight=0.3" in runs[2].command


def test_a_failing_run_stops_the_study_with_its_last_lines(tmp_path, tiny_config_dict):
    path = _study_files(tmp_path, tiny_config_dict, {"kd": [], "skew": []})
    fake = FakeRuns(fail="kd_seed0")
    with pytest.raises(RunFailed, match="(?s)kd_seed0 failed .exit 2.*error: something broke") as e:
        run_study(path, launch=fake)
    assert e.value.code == 2 and fake.calls == ["teacher", "kd_seed0"]  # nothing after it


@pytest.mark.parametrize("methods, extra, message", [
    ({"kd": ["distill.losses=[{name: no_such_loss}]"]}, {}, "methods.kd: distill.losses"),
    ({"kd": ["teacher.arch.d_model=64"]}, {}, "may not change teacher.arch.d_model"),
    ({"ce_only": []}, {}, "methods.ce_only: implicit"),
    ({"kd": []}, {"overrides": ["training.student.max_steps=null"]}, "training.student.max_steps is not set"),
    ({"kd": []}, {"test_sources": 80}, "not more than test_sources"),
])
def test_bad_study_files_fail_before_any_run(tmp_path, tiny_config_dict, capsys, methods, extra, message):
    from benchmark.study.__main__ import main
    path = _study_files(tmp_path, tiny_config_dict, methods, **extra)
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "study" / "teacher").exists() and not (tmp_path / "study" / "runs").exists()


# --------------------------------------------------------------------------- end to end, real runs
def test_end_to_end_tiny_study(tmp_path, tiny_config_dict):
    """The real thing on a tiny synthetic task, through the CLI: the teacher, one method and ce_only, one
    seed, each a `python main.py` subprocess; the table's numbers are those of the runs' own prediction files."""
    import subprocess
    import sys
    from conftest import ROOT
    methods = {"vanilla_kd": ["distill.losses=[{name: vanilla_kl, weight: 0.5, temperature: 2.0}]"]}
    path = _study_files(tmp_path, tiny_config_dict, methods)
    done = subprocess.run([sys.executable, "-m", "benchmark.study", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)  # generous: only a hang reaches it
    assert done.returncode == 0, done.stderr[-2000:]
    study = tmp_path / "study"
    r = json.loads((study / "study_results.json").read_text())
    table = (study / "study_table.md").read_text()
    for name in ("copy_source", "delete_toxic_words", "teacher", "ce_only", "vanilla_kd"):
        assert f"| {name} " in table
    assert "## Against the CE-only student" in table and "## The teacher against the trivial systems" in table
    run = study / "runs" / "vanilla_kd_seed0"
    for name, system in (("student", "vanilla_kd"), ("student_ce", "ce_only"), ("teacher", "teacher")):
        rows = [json.loads(line) for line in (run / f"predictions_{name}.jsonl").read_text().splitlines()]
        direct = compute_metrics([x["prediction"] for x in rows], [x["references"] for x in rows])
        assert len(rows) == 12
        for k in ("sacrebleu", "chrf", "rougeL"):
            assert r["systems"][system]["metrics"][k] == pytest.approx(direct[k], abs=1e-9)
    bench = json.loads((run / "benchmark_results.json").read_text())
    lat = {m["name"]: m.get("latency_p50_ms") for m in bench["models"]}
    assert r["systems"]["vanilla_kd"]["speedup"] == pytest.approx(lat["teacher"] / lat["student"])
    summary = json.loads((run / "student_ce" / "training_summary.json").read_text())
    assert summary["steps"] == tiny_config_dict["training"]["student"]["max_steps"]  # same budget
    log = (study / "logs" / "study.log").read_text()
    assert "study run vanilla_kd_seed0: finished in" in log and "study run teacher: finished in" in log


@pytest.mark.parametrize("name", ["synthetic", "paradetox"])
def test_shipped_study_files_validate_every_run(name, shared, tmp_path):
    """configs/studies/*.yaml: every run's config (base + method + seed) is valid, losses included."""
    from benchmark.study.config import load_study
    from benchmark.study.runs import plan
    from benchmark.study.split import data_overrides
    from conftest import ROOT
    from settings import load_config
    study, base = load_study(ROOT / "configs" / "studies" / f"{name}.yaml")
    paths = {k: tmp_path / f"{k}.jsonl" for k in ("train", "validation", "test")}
    runs = plan(study, base, tmp_path, data_overrides(paths, load_config(base).data))  # as run_study calls it
    assert len(runs) == 1 + len(study.methods) * len(study.seeds) and study.seeds == [0, 1, 2]
    assert {"vanilla_kd", "skew_kl", "vanilla_kd_hidden", "pseudo_labels"} <= set(study.methods)
    pseudo = next(r for r in runs if r.method == "pseudo_labels")
    assert f"cache_dir: '{tmp_path}/pseudo_labels'" in " ".join(pseudo.command)
    transfer = f"data.unlabeled_file={tmp_path}/split/unlabeled.jsonl"
    users = {r.method for r in runs if transfer in r.command}
    assert users == ({"pseudo_labels", "pseudo_labels_kd", "pseudo_labels_on_policy"} if name == "synthetic" else
                     {"pseudo_labels_transfer", "pseudo_labels_on_policy"})
    on_policy = {r.method for r in runs if any(c.startswith("distill.on_policy=") for c in r.command)}
    assert on_policy == {"gkd_jsd_lambda05", "gkd_jsd_lambda1", "on_policy_rkl", "pseudo_labels_on_policy"}
    assert all(r.hosts_ce_only is False for r in runs if r.method in users)  # ce_only: the labeled pairs alone


def test_the_transfer_set_is_written_without_labeled_sources_and_read_only_by_the_methods_naming_it(
        tmp_path, tiny_config_dict):
    from settings import load_config
    from benchmark.study.split import data_overrides
    tiny = copy.deepcopy(tiny_config_dict)
    tiny["data"]["synthetic"].update(num_examples=80, unlabeled_examples=60)
    tiny["distill"]["pseudo_labels"] = {"num_beams": 1, "targets": "both"}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny))
    cfg = load_config(tmp_path / "base.yaml")
    split = study_split(cfg.data, test_sources=12, validation_sources=6, seed=0)
    labeled = {e.source for k in ("train", "validation", "test") for e in split[k]}
    assert split["unlabeled"] and not set(split["unlabeled"]) & labeled
    paths = write_split(split, tmp_path / "study" / "split")
    assert [json.loads(x)["source"] for x in (tmp_path / "study" / "split" / "unlabeled.jsonl").read_text().splitlines()] \
        == split["unlabeled"]
    given = [s for s in data_overrides(paths, cfg.data) if "unlabeled" in s and not s.endswith("=null")]
    assert given == []  # given to no run by default (the base config's transfer file and column are cleared)
    methods = {"kd": ["distill.pseudo_labels=null"],
               "seq": ["data.unlabeled_file={study_dir}/split/unlabeled.jsonl"]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "base_config": "base.yaml", "output_dir": str(tmp_path / "study"), "seeds": [0], "test_sources": 12,
        "validation_sources": 6, "methods": methods}))
    fake = FakeRuns()
    run_study(tmp_path / "study.yaml", launch=fake)
    assert fake.calls == ["teacher", "kd_seed0", "seq_seed0"]
    logs = {n: (tmp_path / "study" / "logs" / f"{n}.log") for n in ("kd_seed0", "seq_seed0")}
    commands = {n: json.loads((tmp_path / "study" / "runs" / n / "study_run.json").read_text())["args"] for n in logs}
    transfer = f"data.unlabeled_file={tmp_path / 'study' / 'split' / 'unlabeled.jsonl'}"
    assert transfer in commands["seq_seed0"] and transfer not in commands["kd_seed0"]
