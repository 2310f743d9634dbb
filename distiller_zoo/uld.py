"""ULD: Universal Logit Distillation (Boizard et al., 2024), a loss that needs no shared vocabulary.

.. math::
    \\mathcal{L} = \\sum_{i=1}^{\\max(V_s, V_t)} \\left| p_{(i)} - q_{(i)} \\right|

where :math:`p_{(1)} \\ge p_{(2)} \\ge \\dots` are the teacher's probabilities ``softmax(z_t / T)``
sorted in decreasing order, :math:`q_{(i)}` the student's, and the shorter vector is padded with
zeros. This is the closed form of the paper's Wasserstein-1 distance between the two sorted
distributions (a transport cost of 1 between any two different ranks); it compares the *shapes*
of the distributions, not which token gets which mass, so each model keeps its own vocabulary.
It lies in [0, 2] per token (no T^2 factor: like TVD it is first order).

Shapes: ``divergence([N, Vs], [N, Vt]) -> [N]``; with a teacher of another tokenizer it reads the
teacher's full distribution at the aligned positions (:class:`~distiller_zoo.cross_teacher.AlignedChunk`),
not the shared sub-vocabulary. A cached top-K teacher (``distill.teacher_cache``) is refused:
the sorted tail of its distribution is not stored.

Example::

    >>> uld = ULD()
    >>> z = torch.randn(3, 7)
    >>> float(uld.token_losses(z, z[:, torch.randperm(7)]).abs().max()) < 1e-6   # a permutation costs nothing
    True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distiller_zoo.base import LogitLoss


class ULD(LogitLoss):
    """Sorted-probability L1 (Wasserstein) distance between student and teacher; see the module doc."""

    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        q = log_q.exp().sort(dim=-1, descending=True).values
        p = log_p.exp().sort(dim=-1, descending=True).values
        width = max(q.shape[-1], p.shape[-1])
        q, p = F.pad(q, (0, width - q.shape[-1])), F.pad(p, (0, width - p.shape[-1]))
        return (p - q).abs().sum(-1)

    def aligned_token_losses(self, student_logits: torch.Tensor, teacher) -> torch.Tensor:
        t, rows = self.temperature, teacher.rows
        per_row = self.checked_divergence(F.log_softmax(student_logits[rows] / t, dim=-1), teacher.full_logp(t))
        return student_logits.new_zeros(teacher.n, dtype=per_row.dtype).index_add(0, rows, per_row)

    def sparse_token_losses(self, student_logits: torch.Tensor, teacher) -> torch.Tensor:
        raise ValueError("uld needs the teacher's whole distribution; a cached top-K teacher keeps only K "
                         "probabilities: remove distill.teacher_cache or the uld loss")

    def describe(self) -> str:
        return f"ULD(T={self.temperature:g})"
