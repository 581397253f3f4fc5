"""Capped exponential backoff with jitter, shared by every stage that retries transient failures.

Jitter spreads the retries of many tasks that failed together (the remote service went away for
everyone at once) so that they do not all come back in the same second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from petray.domain import Stage
from petray.settings import Settings

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


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts and a time budget after which a stage gives up (issue 8).

    ``budget_s`` counts from the first failure of the current run of failures: a peer that
    comes back and fails again later starts a fresh budget only once the stage moved on.
    """

    backoff: Backoff
    budget_s: float

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")

    def next_delay(self, *, failures: int, elapsed_s: float) -> float | None:
        """Seconds until the next attempt after ``failures`` failures, None once out of budget.

        The last attempt is placed at the end of the budget rather than skipped, so a budget
        shorter than the backoff still gets its final try.
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        remaining = self.budget_s - elapsed_s
        if remaining <= 0:
            return None
        return min(self.backoff.delay(failures - 1), remaining)


def format_duration(seconds: float) -> str:
    """``95`` -> ``"1 min 35 s"``, ``7300`` -> ``"2 h 1 min"``: for reasons staff read."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def retry_policy_for(stage: Stage, settings: Settings) -> RetryPolicy:
    """The budget a stage gets: a day for destinations, the service budget for the rest."""
    backoff = Backoff(
        base_s=settings.retry_base_s, cap_s=max(settings.retry_cap_s, settings.retry_base_s)
    )
    budget = (
        settings.delivery_retry_budget_s
        if stage == Stage.SENDING
        else settings.service_retry_budget_s
    )
    return RetryPolicy(backoff=backoff, budget_s=budget)
