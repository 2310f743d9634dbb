"""How much of a teacher survives shrinking and narrowing (student.init shrink, student.narrow):
the validation loss of each student before any training, with the teacher's weights and with
random weights of the same shape.

    python bench/shrink_init.py [TEACHER_DIR] [VALIDATION_JSONL]   # ~1 minute on 2 CPU cores

Defaults: the ParaDetox study's teacher and split (python -m benchmark.study --config
configs/studies/paradetox.yaml writes them); the first 200 sources with their first reference.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import shrink_model  # noqa: E402

STUDENTS = [((1, 1), {}), ((2, 2), {"d_model": 128, "d_ff": 512}), ((3, 3), {"d_model": 128, "d_ff": 512}),
            ((2, 2), {"d_model": 128}), ((2, 2), {"d_ff": 256}), ((2, 2), {"d_model": 160, "d_ff": 640})]


def validation_loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def main(teacher_dir: Path, validation: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    torch.manual_seed(0)
    teacher = AutoModelForSeq2SeqLM.from_pretrained(str(teacher_dir))
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    rows = [json.loads(line) for line in validation.read_text(encoding="utf-8").splitlines()[:200]]
    batch = tok([r["source"] for r in rows], return_tensors="pt", padding=True, truncation=True, max_length=64)
    labels = tok([r["references"][0] for r in rows], return_tensors="pt", padding=True, truncation=True,
                 max_length=64).input_ids
    batch["labels"] = labels.masked_fill(labels == tok.pad_token_id, -100)
    size = sum(p.numel() for p in teacher.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(rows)} validation pairs")
    print("| student (layers, d_model, d_ff) | parameters | teacher's weights | random weights |")
    print("|---|---|---|---|")
    print(f"| teacher | {size / 1e6:.2f}M | {validation_loss(teacher, batch):.2f} | - |")
    for (enc, dec), width in STUDENTS:
        student = shrink_model(teacher, enc, dec, **width)
        random = AutoModelForSeq2SeqLM.from_config(student.config)
        c, n = student.config, sum(p.numel() for p in student.parameters())
        d_ff = getattr(c, "encoder_ffn_dim", None) or c.d_ff  # BART or T5
        print(f"| {enc}+{dec}, {c.d_model}, {d_ff} | {n / 1e6:.2f}M ({size / n:.1f}x fewer) | "
              f"{validation_loss(student, batch):.2f} | {validation_loss(random, batch):.2f} |")


if __name__ == "__main__":
    study = ROOT / "runs" / "study_paradetox"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else study / "teacher" / "teacher" / "final",
         Path(sys.argv[2]) if len(sys.argv) > 2 else study / "split" / "validation.jsonl")
