"""Result types of the model-based metrics and their guarded model loading.

A model-based metric (BERTScore, style accuracy, perplexity, content preservation)
returns either

* :class:`MetricResult`: ``scores`` (corpus values), ``per_example`` (one list per key,
  aligned with the predictions, for :func:`metrics.bootstrap_ci`'s ``per_example``;
  ``None`` marks an example that is not counted), ``notes`` (one-line remarks such
  as "2 empty predictions scored 0") and ``signature`` (model and settings, for a
  report, like sacrebleu's signatures); or
* :class:`MetricSkipped`: ``name`` and a one-line ``reason``, when its model cannot be
  loaded (a hub name that is neither a local directory nor cached while the hub is
  unreachable or ``HF_HUB_OFFLINE`` is set, a broken directory, a missing label, ...).

Both have ``ok``, ``scores``, ``per_example`` and ``notes``, so a caller can write
``record.update(r.scores)`` and ``if not r.ok: notes.append(str(r))`` without branching.
A metric never raises because its model is unavailable; bad *inputs* (mismatched
lengths, an example without a reference) still raise ``ValueError`` as in
:func:`metrics.compute_metrics`.

Loading goes through ``models.from_hub``: a local path is loaded as is; a hub name is
read from the local cache first and requested from the hub only when
``utils.hub.hub_offline()`` is false and ``utils.hub.hub_reachable()`` (a 3-second probe) is true,
so an offline machine gets a skip at once instead of huggingface_hub's retry loop.
Loaded models (and load failures) are cached per process: the benchmark scores several
systems with one model load; :func:`clear_model_cache` empties the cache.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from utils.errors import one_line


@dataclass(frozen=True)
class MetricResult:
    """Scores of a model-based metric that ran; ``signature`` names the model and settings."""
    name: str
    scores: dict[str, float]
    per_example: dict[str, list[Optional[float]]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    signature: str = ""
    ok: ClassVar[bool] = True


@dataclass(frozen=True)
class MetricSkipped:
    """A model-based metric that did not run; ``reason`` is one line naming the cause and the fix."""
    name: str
    reason: str
    ok: ClassVar[bool] = False
    signature: ClassVar[str] = ""

    @property
    def scores(self) -> dict[str, float]:
        return {}

    @property
    def per_example(self) -> dict[str, list[Optional[float]]]:
        return {}

    @property
    def notes(self) -> tuple[str, ...]:
        return (str(self),)

    def __str__(self) -> str:
        return f"{self.name} skipped: {self.reason}"


MetricOutcome = Union[MetricResult, MetricSkipped]


class ModelUnavailable(Exception):
    """A metric's model cannot be loaded; the message is the one-line reason."""


def load_pretrained(loader: Callable[..., Any], name: str, what: str, **kwargs) -> Any:
    """``loader(name, **kwargs)`` with the project's hub guard; raises :class:`ModelUnavailable`.

    A local path is passed to ``loader`` directly (so the reason for a broken directory is
    the loader's own); anything else goes through ``models.from_hub``.
    """
    from models import from_hub
    from utils.errors import UserError
    try:
        path = Path(name).expanduser()
        if path.exists():
            return loader(str(path), **kwargs)
        return from_hub(loader, name, what, **kwargs)
    except UserError as e:
        raise ModelUnavailable(str(e)) from None
    except Exception as e:  # noqa: BLE001 - any load failure becomes a skip, never a crash
        raise ModelUnavailable(f"{what} {name}: cannot load it ({type(e).__name__}: {one_line(e)})") from None


_MODELS: dict[tuple, Any] = {}


def cached_model(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` once per ``key``; a :class:`ModelUnavailable` is cached and re-raised too."""
    if key not in _MODELS:
        try:
            _MODELS[key] = build()
        except ModelUnavailable as e:
            _MODELS[key] = e
    value = _MODELS[key]
    if isinstance(value, ModelUnavailable):
        raise ModelUnavailable(str(value))
    return value


def clear_model_cache() -> None:
    """Forget every loaded model and every cached load failure."""
    _MODELS.clear()
