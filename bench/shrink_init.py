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

from benchmark.study.runs import teacher_final  # noqa: E402
from models import shrink_model  # noqa: E402

STUDENTS = [((1, 1), {}), ((2, 2), {"d_model": 128, "d_ff": 512}), ((3, 3), {"d_model": 128, "d_ff": 512}),
            ((2, 2), {"d_model": 128}), ((2, 2), {"d_ff": 256}), ((2, 2), {"d_model": 160, "d_ff": 640})]


def validation_loss(model, batches) -> float:
    """Mean cross-entropy over ``batches`` (eval mode: no dropout)."""
    model.eval()
    with torch.no_grad():
        return sum(model(**b).loss.item() for b in batches) / len(batches)


def pairs_batch(tok, pairs) -> dict:
    """(source, target) pairs as one padded batch, padding masked out of the labels."""
    batch = tok([p[0] for p in pairs], return_tensors="pt", padding=True, truncation=True, max_length=64)
    labels = tok([p[1] for p in pairs], return_tensors="pt", padding=True, truncation=True, max_length=64).input_ids
    batch["labels"] = labels.masked_fill(labels == tok.pad_token_id, -100)
    return batch


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def main(teacher_dir: Path, validation: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    torch.manual_seed(0)
    teacher = AutoModelForSeq2SeqLM.from_pretrained(str(teacher_dir))
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    rows = read_rows(validation)[:200]
    batches = [pairs_batch(tok, [(r["source"], r["references"][0]) for r in rows])]
    size = sum(p.numel() for p in teacher.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(rows)} validation pairs")
    print("| student (layers, d_model, d_ff) | parameters | teacher's weights | random weights |")
    print("|---|---|---|---|")
    print(f"| teacher | {size / 1e6:.2f}M | {validation_loss(teacher, batches):.2f} | - |")
    for (enc, dec), width in STUDENTS:
        student = shrink_model(teacher, enc, dec, **width)
        fresh = AutoModelForSeq2SeqLM.from_config(student.config)   # the same shape, random weights
        c, n = student.config, sum(p.numel() for p in student.parameters())
        d_ff = getattr(c, "encoder_ffn_dim", None) or c.d_ff  # BART or T5
        print(f"| {enc}+{dec}, {c.d_model}, {d_ff} | {n / 1e6:.2f}M ({size / n:.1f}x fewer) | "
              f"{validation_loss(student, batches):.2f} | {validation_loss(fresh, batches):.2f} |")


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
    teacher = AutoModelForSeq2SeqLM.from_pretrained(str(teacher_final(study)))
    tok = AutoTokenizer.from_pretrained(str(teacher_final(study)))
    train = [(r["source"], ref) for r in read_rows(study / "split" / "train.jsonl") for ref in r["references"]]
    val = [(r["source"], r["references"][0]) for r in read_rows(study / "split" / "validation.jsonl")]
    val_batches = [pairs_batch(tok, val[i:i + 100]) for i in range(0, len(val), 100)]
    for variant in ("cut", "rescaled"):
        torch.manual_seed(0)
        student = shrink_model(teacher, 2, 2, d_model=128, d_ff=512)
        if variant == "rescaled":
            rescale(student, teacher)
        opt = torch.optim.AdamW(student.parameters(), lr=5e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / 16, (steps - i) / (steps - 16)))
        order = list(range(len(train)))
        random.Random(0).shuffle(order)
        losses = [validation_loss(student, val_batches)]
        for i in range(steps):
            student.train()
            start = i * 64 % len(order)
            student(**pairs_batch(tok, [train[j] for j in order[start:start + 64]])).loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            if (i + 1) % 200 == 0:
                losses.append(validation_loss(student, val_batches))
        print(f"{variant:9s} validation loss at steps 0, 200, ...: {' / '.join(f'{x:.2f}' for x in losses)}")


if __name__ == "__main__":
    study = ROOT / "runs" / "study_paradetox"
    if sys.argv[1:] == ["--rescale-ab"]:
        sys.exit(rescale_ab(study))
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else teacher_final(study),
         Path(sys.argv[2]) if len(sys.argv) > 2 else study / "split" / "validation.jsonl")
