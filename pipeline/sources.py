"""Where a stage's models come from: a directory, this run's export, the hub; the student built from its teacher."""
from __future__ import annotations

from pathlib import Path

from models import (attention_kwargs, build_model, load_saved, load_tokenizer, shrink_model)
from utils.errors import UserError
from utils.logs import log

from pipeline.run import Run, narrow_width


def build_student(run: Run, teacher, t_tok, attentions: bool):
    """The student model and its tokenizer (the teacher's when shrinking or trained alike)."""
    s = run.cfg.student
    if s.init == "shrink":
        attn = attention_kwargs(attentions)
        return shrink_model(teacher, s.arch.encoder_layers, s.arch.decoder_layers, **narrow_width(s), **attn), t_tok
    same_trained = s.tokenizer == run.cfg.teacher.tokenizer and s.tokenizer.train
    tok = t_tok if same_trained else load_tokenizer(s.tokenizer, s.name_or_path,
                                                    run.tokenizer_texts() if s.tokenizer.train else None)
    return build_model(s, tok, attentions=attentions), tok


PRETRAINED = "pretrained"  # a model source meaning "<role>.name_or_path as configured"


def resolve_model(run: Run, role: str, source: Path | str | None = None, attentions: bool = False):
    """(model, tokenizer, directory or None) for ``role``, or None when there is none.

    ``source`` is a directory, :data:`PRETRAINED`, or None for the default order: the
    --teacher_path / --student_path flag, this run's ``<role>/final``, then ``<role>.name_or_path``
    when ``<role>.init`` is pretrained."""
    if source is None:
        source = {"teacher": run.opts.teacher_path, "student": run.opts.student_path}.get(role)
    if source is None and (run.output_dir / role / "final").is_dir():
        source = run.output_dir / role / "final"
    if source is not None and source != PRETRAINED:
        log.info("%s: %s", role, source)
        given = str(source) == str({"teacher": run.opts.teacher_path, "student": run.opts.student_path}.get(role))
        try:
            model, tok = load_saved(source, f"--{role}_path" if given else f"the {role}", attentions,
                                    causal_ok=role == "teacher")
        except UserError:
            if given or Path(source).resolve().parent.parent != run.output_dir.resolve():
                raise
            raise UserError(f"the {role} this run exported ({source}) does not load: its files are damaged or "
                            f"missing; delete that directory and rerun with --resume_from_checkpoint auto (the stage "
                            f"exports it again from its last checkpoint)") from None
        return model, tok, Path(source)
    mcfg = getattr(run.cfg, role, None)  # the baseline student exists only as trained by this run
    if mcfg is None or mcfg.init != "pretrained":
        return None
    tok = load_tokenizer(mcfg.tokenizer, mcfg.name_or_path)
    return build_model(mcfg, tok, attentions, causal_ok=role == "teacher"), tok, None
