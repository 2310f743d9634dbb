"""How close the chunk loss values are to float64, closed form against the autograd route, per loss.

    python bench/closed_form_precision.py            # ~1 min on 2 cores

One 256 x 32,128 chunk (a tiny head over random states); the teacher's logits are the student's
plus Gaussian noise of a given scale, so a small scale is a student near its teacher, where every
KL-type value is a difference of nearly equal terms. Prints, for each loss and scale, the relative
error of the float32 value against the float64 one, by the fused closed form and by float32
autograd on full logits (``token_losses``, what ``chunk_size: 0`` and the autograd route compute).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distiller_zoo import build_loss  # noqa: E402
from distiller_zoo.fused import fused_logit_objective  # noqa: E402
from distiller_zoo.heads import LMHead  # noqa: E402

LOSSES = [("vanilla_kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.5}), ("tvd", {}),
          ("skew_kl", {"skew_alpha": 0.1}), ("skew_reverse_kl", {"skew_alpha": 0.1})]


class Live:
    """A live teacher's logits, chunk by chunk (the closed form may write over a chunk)."""
    outputs = None

    def __init__(self, logits):
        self.logits, self.n = logits, logits.shape[0]

    def chunk(self, a, b):
        return self.logits[a:b].clone()


def main() -> int:
    torch.manual_seed(0)
    n, d, v = 256, 64, 32128
    hidden, weight = torch.randn(n, d), torch.randn(v, d) * 0.3
    student = hidden @ weight.t()
    labels = torch.randint(0, v, (n,))
    print(f"torch {torch.__version__}; chunk {n} x {v}; relative error of the float32 loss sum vs float64")
    print(f"{'loss':28s} {'noise':>6s} {'value':>11s} {'closed form':>12s} {'autograd':>10s}")
    for scale in (1.0, 0.1, 0.01):
        teacher = student + scale * torch.randn(n, v)
        for name, opts in LOSSES:
            loss = build_loss(name, opts)
            exact = float(loss.token_losses(student.double(), teacher.double()).sum())
            _, sums = fused_logit_objective(hidden.requires_grad_(), LMHead(weight, None), labels, Live(teacher),
                                            0.5, [loss], [1.0], n)
            autograd = float(loss.token_losses(student, teacher).sum())
            print(f"{loss.describe():28s} {scale:6g} {exact:11.4g} {abs(float(sums[1]) - exact) / exact:12.1e} "
                  f"{abs(autograd - exact) / exact:10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
