"""Numbers read from header values that may be absent, text, or not finite (DS "NaN" exists)."""

from __future__ import annotations

import math
from typing import Any


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is absent or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def positive_float(value: Any) -> float | None:
    """``value`` as a finite float above zero, or None."""
    number = finite_float(value)
    return number if number is not None and number > 0 else None
