"""Logit distillation losses: divergences between token distributions.

Each loss implements ``divergence(log_q, log_p)`` on temperature-softened log-probabilities
(student ``q``, teacher ``p``, ``[N, M] -> [N]``); :class:`~distiller_zoo.base.LogitLoss` turns
logits into those, for a dense teacher (M = V) or a sparse top-K one (M = K + 1 buckets).
Derivations, bounds and the conventions of the papers are in the README's loss section.
"""
from __future__ import annotations

import math
import numbers

import torch

from distiller_zoo.base import LogitLoss

# --------------------------------------------------------------------------------------------
# Helpers on log-probabilities [N, M]; they keep the input dtype (float32 in training, float64
# in the gradient checks).


def _unit_interval(name: str, value) -> float:
    """Validate an option that must be a real number in [0, 1] (NaN and bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b) = sum_v a(v) (log a(v) - log b(v))`` over the last dim: ``[N, M] -> [N]``.

    Zero probabilities (``-inf`` logits, e.g. a masked token or an empty sparse tail):
    where ``a(v) = 0`` the term is exactly 0 (``0 log 0 = 0``) with a zero gradient; where only
    ``b(v) = 0`` the true term is infinite and ``log b`` is taken as the log of the dtype's
    smallest normal number (-87.3 in float32, below which ``exp`` underflows anyway), so the
    loss stays finite and pushes ``a(v)`` towards 0. Inputs are sanitised *before* the
    arithmetic so that no ``inf - inf`` reaches the graph (a NaN there poisons the gradient
    even when masked out afterwards)."""
    a_zero = log_a == -math.inf
    la = log_a.masked_fill(a_zero, 0.0)
    floor = math.log(torch.finfo(log_a.dtype).tiny)
    lb = torch.where(log_b == -math.inf, la.clamp(max=floor), log_b)
    return torch.where(a_zero, 0.0, la.exp() * (la - lb)).sum(-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w * a + (1 - w) * b)`` in log space (logaddexp, no underflow).

    At the edges (w = 0 or 1) the dropped operand stays in the graph with weight 0, so the
    loss keeps a (zero) gradient in both models. Where both are ``-inf`` the result is
    ``-inf`` with a zero gradient (logaddexp's own gradient would be NaN there)."""
    if w == 0.0:
        return log_b + 0.0 * log_a.masked_fill(log_a == -math.inf, 0.0)
    if w == 1.0:
        return log_a + 0.0 * log_b.masked_fill(log_b == -math.inf, 0.0)
    both = (log_a == -math.inf) & (log_b == -math.inf)
    mixed = torch.logaddexp(log_a.masked_fill(both, 0.0) + math.log(w), log_b.masked_fill(both, 0.0) + math.log1p(-w))
    return mixed.masked_fill(both, -math.inf)


# --------------------------------------------------------------------------------------------
# The losses. p = softmax(z_t / T) (teacher), q = softmax(z_s / T) (student), per target token.


class VanillaKL(LogitLoss):
    r"""Forward KL with temperature (Hinton et al., 2015): :math:`T^2\,\mathrm{KL}(p \| q)`.

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> loss = VanillaKL(temperature=2.0)
        >>> z = torch.randn(5, 7)
        >>> float(loss.token_losses(z, z).abs().max()) < 1e-6
        True
    """

    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return _kl(log_p, log_q) * self.temperature ** 2


class ReverseKL(LogitLoss):
    r"""Reverse (mode-seeking) KL: :math:`T^2\,\mathrm{KL}(q \| p)`.

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> loss = ReverseKL(temperature=2.0)
        >>> bool((loss.token_losses(torch.randn(5, 7), torch.randn(5, 7)) > 0).all())
        True
    """

    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return _kl(log_q, log_p) * self.temperature ** 2


class GeneralizedJSD(LogitLoss):
    r"""Generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024), times T^2.

    .. math::
        m = \beta p + (1 - \beta) q, \qquad
        \mathcal{L} = T^2 \left[\beta\, \mathrm{KL}(p \| m) + (1 - \beta)\, \mathrm{KL}(q \| m)\right]

    with TRL's edges: beta = 0 is forward KL (= ``vanilla_kl``), beta = 1 reverse KL
    (= ``reverse_kl``); these are not the limits of the mixture formula (see the README).

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> jsd = GeneralizedJSD(beta=0.5)
        >>> s, t = torch.randn(4, 9), torch.randn(4, 9)
        >>> bool((jsd.token_losses(s, t) <= math.log(2) + 1e-6).all())
        True
    """

    def __init__(self, beta: float = 0.5, temperature: float = 1.0):
        super().__init__(temperature)
        self.beta = _unit_interval("beta", beta)

    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        beta = self.beta
        if beta == 0.0:
            jsd = _kl(log_p, log_q)                      # forward KL(teacher || student)
        elif beta == 1.0:
            jsd = _kl(log_q, log_p)                      # reverse KL(student || teacher)
        else:
            log_m = _log_mixture(log_p, log_q, beta)     # log(beta * p + (1 - beta) * q)
            jsd = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
        return jsd * self.temperature ** 2

    def describe(self) -> str:
        return f"JSD(beta={self.beta:g}, T={self.temperature:g})"


class TotalVariation(LogitLoss):
    r"""Total variation distance :math:`\tfrac12 \sum_v |p(v) - q(v)|` (no T^2: it is first order).

    Each token's value lies in [0, 1]. Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> v = TotalVariation().token_losses(torch.randn(4, 9), torch.randn(4, 9))
        >>> bool(((v >= 0) & (v <= 1)).all())
        True
    """

    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)

    def describe(self) -> str:
        return f"TVD(T={self.temperature:g})"


class _SkewDivergence(LogitLoss):
    """KL(a || alpha a + (1 - alpha) b): (a, b) = (p, q) for SkewKL, (q, p) for SkewReverseKL."""

    reverse: bool

    def __init__(self, skew_alpha: float = 0.1, temperature: float = 1.0):
        super().__init__(temperature)
        self.skew_alpha = _unit_interval("skew_alpha", skew_alpha)

    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        log_a, log_b = (log_q, log_p) if self.reverse else (log_p, log_q)
        return _kl(log_a, _log_mixture(log_a, log_b, self.skew_alpha)) * self.temperature ** 2

    def describe(self) -> str:
        return f"{type(self).__name__}(alpha={self.skew_alpha:g}, T={self.temperature:g})"


class SkewKL(_SkewDivergence):
    r"""Alpha-skew forward KL of DistiLLM (Ko et al., ICML 2024):
    :math:`T^2\,\mathrm{KL}(p \| \alpha p + (1 - \alpha) q)`, at most ``log(1/alpha)`` per token.

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> s, t = torch.randn(4, 9) * 5, torch.randn(4, 9) * 5
        >>> bool((SkewKL(skew_alpha=0.1).token_losses(s, t) <= math.log(1 / 0.1) + 1e-5).all())
        True
    """

    reverse = False


class SkewReverseKL(_SkewDivergence):
    r"""Alpha-skew reverse KL of DistiLLM: :math:`T^2\,\mathrm{KL}(q \| \alpha q + (1 - \alpha) p)`.

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> s = torch.randn(4, 9)
        >>> float(SkewReverseKL().token_losses(s, s).abs().max()) < 1e-6
        True
    """

    reverse = True
