"""Logit distillation losses: divergences between token distributions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distiller_zoo.base import LogitLoss


class VanillaKL(LogitLoss):
    r"""Forward KL with temperature (Hinton et al., 2015), scaled by T^2.

    .. math::
        \mathcal{L} = T^2 \sum_{n} \sum_{v} p^T_n(v) \left(\log p^T_n(v) - \log q^T_n(v)\right),
        \quad p^T = \mathrm{softmax}(z_t / T),\; q^T = \mathrm{softmax}(z_s / T)

    summed over the N unmasked target positions. This is the true KL (the teacher's entropy
    is included), so it is 0 when student and teacher agree. The T^2 factor keeps gradient
    magnitudes comparable across temperatures.

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> loss = VanillaKL(temperature=2.0)
        >>> z = torch.randn(5, 7)
        >>> float(loss.token_losses(z, z).abs().max()) < 1e-6
        True
    """

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_q = F.log_softmax(student_logits / t, dim=-1)
        log_p = F.log_softmax(teacher_logits / t, dim=-1)
        # xlogy-style guard: p * (log p - log q) with p = exp(log p) is finite even where p underflows to 0
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        return kl * (t * t)
