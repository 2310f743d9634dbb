"""The four modes (:mod:`.modes`, listed in :data:`MODES`) and what they share: a run's context
(:mod:`.run`), its training stages (:mod:`.stages`), where models come from (:mod:`.sources`), the
objectives (:mod:`.objectives`) and the CE-only baseline (:mod:`.baseline`).

Run directory layout (``training.output_dir``)::

    config.resolved.json          the config every stage ran with
    logs/run.log                  timestamped log of every stage
    teacher/final/                exported teacher (safetensors + tokenizer)
    teacher/metrics.jsonl         training log records
    student/final/  student/metrics.jsonl
    student_ce/final/             the CE-only baseline student (training.baseline)
    checkpoints/teacher/ checkpoints/student/   step_*.pt, best.pt
    benchmark_results.json  comparison_table.csv  benchmark_report.txt  predictions_<model>.jsonl

``--overwrite`` never deletes an earlier result before its replacement is complete: a stage that
would replace one trains into ``<role>.new`` beside it (``teacher.new/``,
``checkpoints/teacher.new/``) and is renamed into place once it exported its model.
"""
from pipeline.modes import MODES, benchmark, distill_student, full_pipeline, train_teacher
from pipeline.objectives import build_objective
from pipeline.run import BASELINE, Run, RunOptions, start

__all__ = ["BASELINE", "MODES", "Run", "RunOptions", "benchmark", "build_objective", "distill_student",
           "full_pipeline", "start", "train_teacher"]
