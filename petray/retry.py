"""Capped exponential backoff with jitter, shared by every stage that retries transient failures.

Jitter spreads the retries of many tasks that failed together (the remote service went away for
everyone at once) so that they do not all come back in the same second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# 2**62 seconds is far beyond any cap; clamping the exponent avoids float overflow for callers
# that count attempts for days.
_MAX_EXPONENT = 62


@dataclass(frozen=True)
class Backoff:
    """``delay(attempt)`` is ``d = min(cap_s, base_s * 2**attempt)`` less up to ``jitter * d``.

    ``attempt`` counts from 0 (the delay before the first retry). With ``jitter=0.5`` a delay
    lies in ``[d/2, d]``: never zero, so a dead peer is not hammered, and never above the cap.
    """

    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_s <= 0:
            raise ValueError(f"base_s must be positive, got {self.base_s}")
        if self.cap_s < self.base_s:
            raise ValueError(f"cap_s ({self.cap_s}) must be at least base_s ({self.base_s})")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def ceiling(self, attempt: int) -> float:
        """The delay for ``attempt`` before jitter."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling * (1.0 - self.jitter * self.rng.random())
