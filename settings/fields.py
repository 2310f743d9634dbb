"""What every config section is built from: documented fields and the value checks they share."""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A dataclass field whose documentation travels with it."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


MAX_TOKENS = 2**20  # longer than any sequence a seq2seq model of today attends over
MAX_PARAMETERS = 1e11  # 400 GB of fp32 weights, before gradients and optimizer state


def _positive(name, value, hi=None):
    if value is None or value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name}: {value:,} is beyond what any run can allocate; must be <= {hi:,}")


def _seed(name, value):
    # numpy accepts seeds in [0, 2**32); the data order derives seed * 1000 + epoch for torch's 64-bit generator
    _in_range(name, value, 0, 2**32 - 1)


def _in_range(name, value, lo, hi, hi_open=False):
    if value < lo or value > hi or (hi_open and value == hi):
        raise ValueError(f"{name}: must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")
