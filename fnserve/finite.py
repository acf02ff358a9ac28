"""Finding the numbers JSON cannot carry: NaN and the infinities.

Python's json module reads ``NaN``, ``Infinity`` and ``1e309`` without complaint and writes them back
as tokens no JSON parser accepts, so one such value in the state store makes every later read of it
fail. Values a client sends are refused where they enter (manifests, admin bodies); values a program
measures — a training run's metrics, where a diverged loss is honest news — keep their meaning as the
strings ``"nan"``, ``"inf"`` and ``"-inf"``.
"""

from __future__ import annotations

import math
from typing import Any


def non_finite(value: Any, path: str = "") -> list[str]:
    """Where in a JSON-like value a non-finite number sits (``"a.b[2]"``; ``""`` for the value itself)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{path}[{i}]")]
    return []


def as_strings(value: Any) -> Any:
    """A copy of ``value`` with every non-finite number replaced by its name as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: as_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_strings(v) for v in value]
    return value
