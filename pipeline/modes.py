"""The four modes, as plain functions listed in :data:`MODES`."""
from __future__ import annotations

from pathlib import Path

from settings import Config
from settings.loading import resolved_dict
from settings.paths import PATHS
from distiller_zoo import Objective
from models import (build_model, is_causal_lm, load_saved, load_tokenizer, same_vocabulary,
                    scratch_config, shrunk_config)
from pseudo_labels import pseudo_label_pairs
from checkpoints import config_differences
from training import Trainer
from utils import distributed as dist
from utils.errors import UserError
from utils.files import fields, read_json
from utils.logs import log
from utils.runtime import set_seed

from pipeline.baseline import baseline_run, train_baseline
from pipeline.objectives import build_objective, build_on_policy, check_on_policy_data, on_policy_objective
from pipeline.run import (BASELINE, REPORTS, Run, RunOptions, check_positions, make_job,
                          narrow_width, record_run, start)
from pipeline.sources import PRETRAINED, build_student, resolve_model
from pipeline.stages import (Stage, finished_model, finished_stage, prepare_stage, replace_stage, replacing,
                             run_stage, stage_dirs)


def train_teacher(cfg: Config, opts: RunOptions = RunOptions(), run: Run | None = None) -> Path:
    """Train the teacher with cross-entropy; returns <output_dir>/teacher/final."""
    run = run or start(cfg, opts)
    if cfg.teacher.init == "pretrained" and is_causal_lm(cfg.teacher.name_or_path, cfg.teacher.kind):
        raise UserError("teacher: a causal LM teacher is distilled from as it is (this tool trains seq2seq models); "
                        "skip train_teacher (training.train_teacher false, or --mode distill_student)")
    stage = prepare_stage(run, "teacher")
    if stage.finished:
        return finished_stage(stage)
    set_seed(cfg.training.seed)
    tok = load_tokenizer(cfg.teacher.tokenizer, cfg.teacher.name_or_path,
                         run.tokenizer_texts() if cfg.teacher.tokenizer.train else None)
    model = build_model(cfg.teacher, tok)
    check_positions(model, cfg, "teacher")
    return run_stage(run, stage, Trainer(make_job(run, "teacher", tok, stage), model, tok))


def distill_student(cfg: Config, opts: RunOptions = RunOptions(), run: Run | None = None,
                    teacher_path: Path | str | None = None, baseline: bool = True) -> Path:
    """Distill the student from a trained teacher; returns <output_dir>/student/final. With
    training.baseline (and ``baseline``; full_pipeline runs it as a stage of its own), then train the
    CE-only student."""
    run = run or start(cfg, opts)
    baseline = baseline and cfg.training.baseline
    objective = build_objective(cfg)  # a wrong loss option fails before a large teacher is loaded
    on_policy = on_policy_objective(cfg)
    check_logits_only(cfg, objective, cross=False)
    stage = prepare_stage(run, "student")  # refuse before a large teacher is loaded
    if baseline:
        prepare_stage(baseline_run(run), BASELINE)
    if not stage.finished:  # the data is read (and so checked) before a teacher is loaded
        _ = run.splits, cfg.distill.pseudo_labels and run.unlabeled
        check_on_policy_data(run)
    final = finished_stage(stage) if stage.finished else _distill(run, stage, objective, on_policy, teacher_path)
    if baseline:
        train_baseline(cfg, opts, run, teacher_path)
    return final


def _distill(run: Run, stage: Stage, objective: Objective, on_policy: Objective | None, teacher_path) -> Path:
    """Load the teacher, build the student and its data (pseudo-labels, the teacher cache, on-policy
    samples), train."""
    cfg = run.cfg
    attentions = "attentions" in objective.requires
    found = resolve_model(run, "teacher", teacher_path, attentions)
    if found is None:
        raise UserError(f"distill_student needs a trained teacher: run --mode train_teacher first (it writes "
                        f"{run.output_dir / 'teacher' / 'final'}), pass --teacher_path DIR, or set teacher.init "
                        f"pretrained with a name_or_path")
    teacher, t_tok, _ = found
    set_seed(cfg.training.seed)
    student, s_tok = build_student(run, teacher, t_tok, attentions)
    check_positions(teacher, cfg, "teacher")
    check_positions(student, cfg, "student")
    cross = not same_vocabulary(s_tok, t_tok) or not teacher.config.is_encoder_decoder
    check_logits_only(cfg, objective, cross)
    for where, obj in (("distill.losses", objective), ("distill.on_policy.losses", on_policy)):
        if obj is not None:
            obj.vocab_size = len(s_tok)
            try:
                obj.bind(student.config, teacher.config)
            except ValueError as e:
                raise UserError(f"{where}: {e}") from None
    job = make_job(run, "student", s_tok, stage, objective=objective, teacher=teacher,
                   on_policy=on_policy and build_on_policy(run, on_policy, student, s_tok))
    if cross:  # another tokenizer or a causal teacher: aligned by characters (distiller_zoo.cross_teacher)
        from distiller_zoo.cross_teacher import cross_tokenizer_source
        job.collator, job.teacher = cross_tokenizer_source(teacher, t_tok, s_tok, job.collator, job.train_pairs,
                                                           cfg.teacher.prompt_template, log)
    if cfg.distill.pseudo_labels is not None:  # sequence-level KD: the teacher's outputs are the data
        with dist.main_first():  # rank 0 decodes; the other ranks then read its shards
            job.train_pairs = pseudo_label_pairs(run, teacher.to(run.device), t_tok)  # before a cache covers them
    if (tc := cfg.distill.teacher_cache) is not None:  # the teacher runs once over the pairs, then never again
        from distiller_zoo.cache import open_cache
        with dist.main_first():  # built once, by rank 0
            job.teacher = open_cache(Path(tc.dir or run.output_dir / "teacher_cache"), teacher, s_tok,
                                     job.train_pairs, job.collator, tc.top_k, objective.temperatures(), len(s_tok),
                                     run.device, log)
        del teacher, found
    return run_stage(run, stage, Trainer(job, student, s_tok))


def benchmark(cfg: Config, opts: RunOptions = RunOptions(), run: Run | None = None,
              sources: dict | None = None) -> dict:
    """Score and time the available models; writes the three report files into output_dir."""
    from benchmark import BenchModel, run_benchmark
    from benchmark.core import benchmark_examples
    if run is None and opts.resume:
        raise UserError("--mode benchmark has nothing to resume (it keeps no checkpoints); drop "
                        "--resume_from_checkpoint, and pass --overwrite to replace earlier reports")
    run = run or start(cfg, opts)
    check_reports_free(run)
    if sources is None:  # benchmark mode: exactly the models given on the command line, when any is
        given = {"teacher": run.opts.teacher_path, "student": run.opts.student_path}
        sources = {role: path for role, path in given.items() if path} or None
    models = []
    for role in sources or ("teacher", "student", BASELINE):
        found = resolve_model(run, role, (sources or {}).get(role))
        if found is not None and not found[0].config.is_encoder_decoder:
            log.warning("benchmark: the %s is a causal LM; the benchmark scores seq2seq models, so it is left out",
                        role)
        elif found is not None:
            check_positions(found[0], cfg, role)
            models.append(BenchModel(role, *found))
    for extra in cfg.benchmark.models:
        model, tok = load_saved(extra.path, f"benchmark.models {extra.name!r}")
        check_positions(model, cfg, extra.name)
        models.append(BenchModel(extra.name, model, tok, Path(extra.path)))
    if not models:
        raise UserError("benchmark: no model to evaluate; pass --teacher_path and/or --student_path, or run "
                        "train_teacher / distill_student into this --output_dir first")
    benchmark_examples(run)  # an empty split is refused before anything is replaced
    earlier = {p: p.stat().st_mtime_ns for p in run.output_dir.glob("predictions_*.jsonl")}
    record_run(run, "benchmark")
    results = run_benchmark(models, run)
    for old, mtime in earlier.items():  # predictions of models no longer compared go, once the new ones exist
        if dist.is_main() and old.exists() and old.stat().st_mtime_ns == mtime:
            old.unlink()
    return results


def check_reports_free(run: Run) -> None:
    """Earlier benchmark reports are replaced only on request (--overwrite, or resuming a pipeline)."""
    if (run.output_dir / "benchmark_results.json").exists() and not (run.opts.overwrite or run.opts.resume == "auto"):
        raise UserError(f"{run.output_dir} already holds benchmark reports; pass --overwrite to replace them "
                        f"or choose another --output_dir")


def check_logits_only(cfg: Config, objective: Objective, cross: bool) -> None:
    """What needs more of the teacher than its logits: refused with a teacher cache, and with a teacher
    of another tokenizer (aligned by characters), which also cannot write pseudo-labels for the student."""
    if cfg.distill.teacher_cache is not None and objective.requires - {"logits"}:
        raise UserError("distill.teacher_cache keeps the teacher's logits only; hidden-state and attention losses "
                        "need the live teacher: remove distill.teacher_cache or those losses")
    if cross and (objective.requires - {"logits"} or cfg.distill.teacher_cache or cfg.distill.pseudo_labels):
        raise UserError("a teacher with another tokenizer (or a causal one) is aligned with the student by characters "
                        "and answers with its logits only: remove distill.teacher_cache, distill.pseudo_labels and "
                        "hidden-state/attention losses, or give the student the teacher's tokenizer")


def preflight(run: Run) -> None:
    """Checks that would otherwise fail only after hours of training."""
    t, s = run.cfg.teacher, run.cfg.student
    # two tokenizers trained on the data with other settings: the student's differs from the teacher's
    other_tokenizer = s.init == "scratch" and t.tokenizer.train and s.tokenizer.train and s.tokenizer != t.tokenizer
    check_logits_only(run.cfg, build_objective(run.cfg), bool(other_tokenizer))
    on_policy_objective(run.cfg)
    check_on_policy_data(run)
    check_reports_free(run)
    if s.init == "shrink" and t.init == "scratch" and not run.opts.teacher_path:   # the teacher is trained first
        layers = (s.arch.encoder_layers, s.arch.decoder_layers)
        # the vocabulary and special ids do not shape a shrink: any will do
        shrunk_config(scratch_config(t.arch, vocab_size=64, pad=0, eos=1, bos=1), *layers, **narrow_width(s))
    if run.cfg.distill.pseudo_labels is not None:
        _ = run.unlabeled  # a transfer set is read (and so checked) before the teacher trains
    split = run.cfg.benchmark.split
    if not getattr(run.splits, split):
        raise UserError(f"benchmark.split {split!r} is empty; adjust data.split_ratios or give data.{split}_file")


def full_pipeline(cfg: Config, opts: RunOptions = RunOptions()) -> dict:
    """train_teacher -> distill_student -> benchmark in one run directory.

    With --resume_from_checkpoint auto, a stage whose final model already exists is skipped. With
    --overwrite, the new teacher and student replace the earlier ones once both are trained."""
    if opts.resume not in (None, "auto"):
        raise UserError("full_pipeline resumes with --resume_from_checkpoint auto (it finds each stage's checkpoint)")
    run = start(cfg, opts)
    # an interrupted --overwrite (a stage's new result, or its start, beside the old): the later stages'
    # old results came from the old models, so they are replaced too, even where nothing new was written
    run.renewing = opts.resume == "auto" and any(replacing(run, role) for role in ("teacher", "student", BASELINE))
    if opts.resume == "auto" and not run.renewing and all((run.output_dir / name).is_file() for name in REPORTS):
        return finished_run(run)
    preflight(run)
    run.defer_replace = True
    if opts.teacher_path:
        teacher = Path(opts.teacher_path)
    elif not cfg.training.train_teacher:
        teacher = PRETRAINED  # an already fine-tuned teacher, used as it is
    else:
        teacher = finished_model(run, "teacher") or train_teacher(cfg, opts, run)
    models = {"teacher": teacher,
              "student": finished_model(run, "student") or distill_student(cfg, opts, run, teacher, baseline=False)}
    if cfg.training.baseline:
        models[BASELINE] = finished_model(run, BASELINE) or train_baseline(cfg, opts, run, teacher)
    for role in models:
        if (stage_dirs(run, role, new=True)[0] / "final").is_dir():
            models[role] = replace_stage(run, role)
    return benchmark(cfg, opts, run, models)


def finished_run(run: Run) -> dict:
    """A pipeline whose benchmark reports exist (written last) is finished: resuming it changes nothing,
    when it ran under this config."""
    out, fix = run.output_dir, "redo the benchmark with --mode benchmark --overwrite"
    saved, results = (read_json(out / name, fix, lambda d: fields(d)) for name in ("config.resolved.json",
                                                                              "benchmark_results.json"))
    ignored = {key.split("[")[0] for key in PATHS} | {"training.rendezvous_timeout", "training.num_threads"}
    diffs = [d for d in config_differences(saved, resolved_dict(run.cfg)) if d.split(":")[0] not in ignored]
    if diffs:
        raise UserError(f"{out} holds a finished run of another config ({'; '.join(diffs[:3])}); use the config it "
                        f"ran with, or --overwrite to run it again")
    log.info("the run in %s is finished (benchmark reports in place); nothing to resume", out)
    return results


MODES = {
    "train_teacher": train_teacher,
    "distill_student": distill_student,
    "benchmark": benchmark,
    "full_pipeline": full_pipeline,
}
