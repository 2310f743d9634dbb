"""Logit distillation losses: divergences between token distributions."""
from __future__ import annotations

import math
import numbers

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


# --------------------------------------------------------------------------------------------
# Helpers shared by the divergences below. All work on log-probabilities of shape [N, V] and
# keep the input dtype (float32 from the base class; float64 in the gradient checks).


def _unit_interval(name: str, value) -> float:
    """Validate an option that must be a real number in [0, 1] (NaN and bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b) = sum_v a(v) (log a(v) - log b(v))`` over the last dim: ``[N, V] -> [N]``.

    ``a`` is recovered as ``exp(log a)``, so entries where ``a`` underflows to 0 (with a
    finite log) contribute exactly 0 instead of ``0 * log 0 = NaN`` (the xlogy convention)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w * a + (1 - w) * b)`` computed in log space with logaddexp (no underflow).

    The edges return ``log_b`` (w = 0) or ``log_a`` (w = 1) directly, so ``log(0) = -inf``
    never enters the graph. The dropped operand is kept in the graph with weight 0, so a
    loss built on the mixture stays differentiable (zero gradient) in both models even when
    it is identically 0 (e.g. ``SkewKL(skew_alpha=1)``: ``KL(p || p)`` would otherwise not
    depend on the student at all and ``backward()`` would fail)."""
    if w == 0.0:
        return log_b + 0.0 * log_a
    if w == 1.0:
        return log_a + 0.0 * log_b
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float):
    """Temperature-softened ``(log q_s, log p_t)``."""
    return F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1)


class ReverseKL(LogitLoss):
    r"""Reverse KL, student-first, with temperature, scaled by T^2 (as :class:`VanillaKL`).

    .. math::
        \mathcal{L} = T^2 \sum_{n} \sum_{v} q^T_n(v) \left(\log q^T_n(v) - \log p^T_n(v)\right)
        = T^2\, \mathrm{KL}(q^T \,\|\, p^T),
        \quad p^T = \mathrm{softmax}(z_t / T),\; q^T = \mathrm{softmax}(z_s / T)

    Mode-seeking: the student is penalised for putting mass where the teacher has little,
    not for missing teacher modes (MiniLLM, Gu et al., ICLR 2024, "MiniLLM: Knowledge
    Distillation of Large Language Models", uses it at sequence level; this is the
    token-level form, as in DistiLLM's ``reverse_kl`` and TRL's GKD with ``beta=1``). The
    student's entropy is included, so it is 0 when student and teacher agree. The T^2 factor
    has the same role as in :class:`VanillaKL`: at high T the divergence shrinks like 1/T^2,
    and T^2 keeps the value and the gradient O(1).

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> loss = ReverseKL(temperature=2.0)
        >>> z = torch.randn(5, 7)
        >>> float(loss.token_losses(z, z).abs().max()) < 1e-6
        True
        >>> bool((loss.token_losses(torch.randn(5, 7), z) > 0).all())
        True
    """

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_q, log_p = _log_probs(student_logits, teacher_logits, t)
        return _kl(log_q, log_p) * (t * t)


class GeneralizedJSD(LogitLoss):
    r"""Generalized Jensen-Shannon divergence JSD(beta) of GKD (Agarwal et al., "On-Policy
    Distillation of Language Models: Learning from Self-Generated Mistakes", ICLR 2024),
    with TRL's conventions (``GKDTrainer.generalized_jsd_loss``), scaled by T^2.

    With teacher :math:`p = p^T = \mathrm{softmax}(z_t/T)` and student
    :math:`q = q^T = \mathrm{softmax}(z_s/T)`, for :math:`0 < \beta < 1`:

    .. math::
        m_\beta = \beta\, p + (1 - \beta)\, q, \qquad
        \mathcal{L} = T^2 \sum_n \left[ \beta\, \mathrm{KL}(p_n \,\|\, m_{\beta,n})
                                      + (1 - \beta)\, \mathrm{KL}(q_n \,\|\, m_{\beta,n}) \right]

    and, as explicit special cases (TRL does the same),

    .. math::
        \beta = 0:\; \mathcal{L} = T^2\, \mathrm{KL}(p \,\|\, q) \;\text{(forward KL, = vanilla\_kl)}, \qquad
        \beta = 1:\; \mathcal{L} = T^2\, \mathrm{KL}(q \,\|\, p) \;\text{(reverse KL, = reverse\_kl)}.

    ``log m`` is a logaddexp of ``log(beta) + log p`` and ``log(1-beta) + log q``.

    **The edges are not limits.** The mixture formula itself tends to 0 at both ends
    (``m -> q`` and the p-term is weighted by beta -> 0). What survives is its slope:
    ``JSD(beta) = beta * KL(p||q) - beta^2/2 * chi2(p||q) + O(beta^3)`` near 0, and
    ``JSD(beta) = (1-beta) * KL(q||p) - (1-beta)^2/2 * chi2(q||p) + O((1-beta)^3)`` near 1
    (:math:`\chi^2(a\|b) = \sum a^2/b - 1`). So ``JSD(beta)/beta -> KL(p||q)`` and
    ``JSD(beta)/(1-beta) -> KL(q||p)``, which is why GKD says JSD(beta) "behaves like"
    forward KL for small beta and reverse KL for beta near 1, and why TRL defines the two
    edges as those KLs. Consequence: the loss value jumps at the edges (e.g. beta = 1e-4
    gives about 1e-4 times the beta = 0 loss); rescale the loss weight if you sweep beta
    towards an edge. JSD(0.5) is the symmetric Jensen-Shannon divergence, <= log 2 / token
    before the T^2 factor.

    Deviation from TRL: TRL applies no T^2 factor. It is applied here so that ``beta=0`` is
    exactly :class:`VanillaKL` and ``beta=1`` exactly :class:`ReverseKL` at every temperature;
    JSD(beta) is second order in (p - q) like KL, so T^2 keeps it O(1) at high T. The two
    agree at T = 1. (DistiLLM's ``js_distance(lam)`` weights the other way round: its
    ``lam`` is GKD's ``1 - beta``.)

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> jsd = GeneralizedJSD(beta=0.5)
        >>> s, t = torch.randn(4, 9), torch.randn(4, 9)
        >>> bool((jsd.token_losses(s, t) <= math.log(2) + 1e-6).all())
        True
        >>> torch.allclose(jsd.token_losses(s, t), jsd.token_losses(t, s), atol=1e-6)   # symmetric at 0.5
        True
        >>> torch.allclose(GeneralizedJSD(beta=0.0).token_losses(s, t), VanillaKL().token_losses(s, t))
        True
    """

    def __init__(self, beta: float = 0.5, temperature: float = 1.0):
        super().__init__(temperature)
        self.beta = _unit_interval("beta", beta)

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t, beta = self.temperature, self.beta
        log_q, log_p = _log_probs(student_logits, teacher_logits, t)
        if beta == 0.0:
            jsd = _kl(log_p, log_q)                      # forward KL(teacher || student)
        elif beta == 1.0:
            jsd = _kl(log_q, log_p)                      # reverse KL(student || teacher)
        else:
            log_m = _log_mixture(log_p, log_q, beta)     # log(beta * p + (1 - beta) * q)
            jsd = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
        return jsd * (t * t)

    def describe(self) -> str:
        return f"JSD(beta={self.beta:g}, T={self.temperature:g})"


class TotalVariation(LogitLoss):
    r"""Total variation distance between the softened distributions (no T^2 factor).

    .. math::
        \mathcal{L} = \sum_n \tfrac12 \sum_v \left| p^T_n(v) - q^T_n(v) \right|,
        \quad p^T = \mathrm{softmax}(z_t / T),\; q^T = \mathrm{softmax}(z_s / T)

    Each token's value lies in [0, 1] and is 0 iff the distributions agree. Used as a
    distillation objective by f-DISTILL (Wen et al., ACL 2023, "f-Divergence Minimization for
    Sequence-Level Knowledge Distillation") and listed among DistiLLM's losses
    (``tv_distance``, Ko et al., ICML 2024).

    Temperature: the value is *not* multiplied by T^2 (nor T). TVD is first order in
    (p - q), so at high T it shrinks like 1/T (not 1/T^2 as KL does), and T^2 would make it
    grow without bound instead; keeping it unscaled preserves the [0, 1] bound, which makes
    the number readable in logs. At high T its value and gradient fall roughly like 1/T:
    raise the loss weight if you use T well above 1.

    The gradient of ``|x|`` at exactly x = 0 is taken as 0 (PyTorch's convention).

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> tvd = TotalVariation()
        >>> s, t = torch.randn(4, 9), torch.randn(4, 9)
        >>> v = tvd.token_losses(s, t)
        >>> bool(((v >= 0) & (v <= 1)).all())
        True
        >>> float(tvd.token_losses(t, t).abs().max()) < 1e-6
        True
    """

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        log_q, log_p = _log_probs(student_logits, teacher_logits, self.temperature)
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)

    def describe(self) -> str:
        return f"TVD(T={self.temperature:g})"


class _SkewDivergence(LogitLoss):
    """KL(a || alpha a + (1 - alpha) b): (a, b) = (p, q) for SkewKL, (q, p) for SkewReverseKL."""

    reverse: bool

    def __init__(self, skew_alpha: float = 0.1, temperature: float = 1.0):
        super().__init__(temperature)
        self.skew_alpha = _unit_interval("skew_alpha", skew_alpha)

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_q, log_p = _log_probs(student_logits, teacher_logits, t)
        log_a, log_b = (log_q, log_p) if self.reverse else (log_p, log_q)
        return _kl(log_a, _log_mixture(log_a, log_b, self.skew_alpha)) * (t * t)

    def describe(self) -> str:
        return f"{type(self).__name__}(alpha={self.skew_alpha:g}, T={self.temperature:g})"


class SkewKL(_SkewDivergence):
    r"""Alpha-skew (forward) KL of DistiLLM (Ko et al., "DistiLLM: Towards Streamlined
    Distillation for Large Language Models", ICML 2024; ``skewed_forward_kl``), scaled by T^2.

    .. math::
        \mathcal{L} = T^2 \sum_n \mathrm{KL}\!\left(p_n \,\middle\|\, \alpha\, p_n + (1 - \alpha)\, q_n\right),
        \quad p = \mathrm{softmax}(z_t / T),\; q = \mathrm{softmax}(z_s / T)

    The teacher is mixed into the student side, which keeps the log-ratio bounded:
    ``0 <= SKL <= min((1 - alpha) KL(p||q), log(1/alpha))`` per token (before T^2), the first
    by convexity of KL in its second argument, the second because ``m >= alpha p``.
    ``skew_alpha = 0`` is plain forward KL (= :class:`VanillaKL`); ``skew_alpha = 1`` is
    identically 0. The default 0.1 is DistiLLM's.

    Difference from DistiLLM's code: DistiLLM computes the cross-entropy
    ``-sum p log m`` (the teacher entropy, a constant for the student, is dropped). Here the
    entropy is kept, so the loss is a true divergence and 0 when student equals teacher;
    gradients are identical. DistiLLM has no temperature; at T = 1 they coincide up to that
    constant.

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> skl = SkewKL(skew_alpha=0.1)
        >>> s, t = torch.randn(4, 9) * 5, torch.randn(4, 9) * 5
        >>> bool((skl.token_losses(s, t) <= math.log(1 / 0.1) + 1e-5).all())
        True
        >>> torch.allclose(SkewKL(skew_alpha=0.0).token_losses(s, t), VanillaKL().token_losses(s, t))
        True
    """

    reverse = False


class SkewReverseKL(_SkewDivergence):
    r"""Alpha-skew reverse KL of DistiLLM (Ko et al., ICML 2024; ``skewed_reverse_kl``),
    scaled by T^2.

    .. math::
        \mathcal{L} = T^2 \sum_n \mathrm{KL}\!\left(q_n \,\middle\|\, \alpha\, q_n + (1 - \alpha)\, p_n\right),
        \quad p = \mathrm{softmax}(z_t / T),\; q = \mathrm{softmax}(z_s / T)

    The student is mixed into the teacher side (DistiLLM: ``mixed = (1-lam) p + lam q``
    inside ``KL(q || .)``). Bounds per token (before T^2):
    ``0 <= SRKL <= min((1 - alpha) KL(q||p), log(1/alpha))``. ``skew_alpha = 0`` is plain
    reverse KL (= :class:`ReverseKL`); ``skew_alpha = 1`` is identically 0. Default 0.1 as in
    DistiLLM. DistiLLM's reverse version already includes the student entropy, so it equals
    this one at T = 1.

    Shapes: ``token_losses([N, V], [N, V]) -> [N]``.

    Example::

        >>> srkl = SkewReverseKL()
        >>> s, t = torch.randn(4, 9), torch.randn(4, 9)
        >>> torch.allclose(SkewReverseKL(skew_alpha=0.0).token_losses(s, t), ReverseKL().token_losses(s, t))
        True
        >>> float(srkl.token_losses(s, s).abs().max()) < 1e-6
        True
    """

    reverse = True
