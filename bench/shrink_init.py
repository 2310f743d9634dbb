"""How much of a teacher survives shrinking and narrowing (student.init shrink, student.narrow):
the validation loss of each student before any training, with the teacher's weights and with
random weights of the same shape.

    python bench/shrink_init.py [TEACHER_DIR] [VALIDATION_JSONL]   # ~1 minute on 2 CPU cores
    python bench/shrink_init.py --rescale-ab                       # ~6 minutes: see rescale_ab

Defaults: the ParaDetox study's teacher and split (python -m benchmark.study --config
configs/studies/paradetox.yaml writes them); the first 200 sources with their first reference.
"""
from __future__ import annotations

import json
import random
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


def rescale(student, teacher) -> None:
    """Multiply every linear weight by n_teacher / n_student along its cut input axis (the LM head,
    tied to the embeddings, aside): each output sums fewer terms after the cut."""
    t_width = {n: m.weight.shape[1] for n, m in teacher.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, module in student.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            with torch.no_grad():
                module.weight.mul_(t_width[name] / module.weight.shape[1])


def rescale_ab(study: Path, steps: int = 800) -> None:
    """The 2+2, d_model 128, d_ff 512 student trained with CE alone (AdamW 5e-4, linear decay,
    batch 64, the same data order), as cut and rescaled: validation loss every 200 steps."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    teacher_dir, split = study / "teacher" / "teacher" / "final", study / "split"
    teacher = AutoModelForSeq2SeqLM.from_pretrained(str(teacher_dir))
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    rows = lambda f: [json.loads(line) for line in (split / f).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    train = [(r["source"], ref) for r in rows("train.jsonl") for ref in r["references"]]
    val = [(r["source"], r["references"][0]) for r in rows("validation.jsonl")]

    def batch(pairs):
        b = tok([p[0] for p in pairs], return_tensors="pt", padding=True, truncation=True, max_length=64)
        labels = tok([p[1] for p in pairs], return_tensors="pt", padding=True, truncation=True, max_length=64).input_ids
        b["labels"] = labels.masked_fill(labels == tok.pad_token_id, -100)
        return b
    val_batches = [batch(val[i:i + 100]) for i in range(0, len(val), 100)]
    for variant in ("cut", "rescaled"):
        torch.manual_seed(0)
        student = shrink_model(teacher, 2, 2, d_model=128, d_ff=512)
        if variant == "rescaled":
            rescale(student, teacher)
        opt = torch.optim.AdamW(student.parameters(), lr=5e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / 16, (steps - i) / (steps - 16)))
        order = list(range(len(train)))
        random.Random(0).shuffle(order)
        losses = [sum(validation_loss(student, b) for b in val_batches) / len(val_batches)]
        for i in range(steps):
            student.train()
            start = i * 64 % len(order)
            student(**batch([train[j] for j in order[start:start + 64]])).loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            if (i + 1) % 200 == 0:
                losses.append(sum(validation_loss(student, b) for b in val_batches) / len(val_batches))
        print(f"{variant:9s} validation loss at steps 0, 200, ...: {' / '.join(f'{x:.2f}' for x in losses)}")


if __name__ == "__main__":
    study = ROOT / "runs" / "study_paradetox"
    if sys.argv[1:] == ["--rescale-ab"]:
        sys.exit(rescale_ab(study))
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else study / "teacher" / "teacher" / "final",
         Path(sys.argv[2]) if len(sys.argv) > 2 else study / "split" / "validation.jsonl")
