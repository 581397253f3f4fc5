"""Backoff: capped, exponential, jittered within bounds."""

from __future__ import annotations

import random

import pytest

from petray.retry import Backoff


def test_delays_grow_exponentially_until_the_cap_without_jitter() -> None:
    backoff = Backoff(base_s=1, cap_s=60, jitter=0)
    assert [backoff.delay(a) for a in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_jitter_stays_within_half_and_full_delay_and_varies() -> None:
    backoff = Backoff(base_s=1, cap_s=60, jitter=0.5, rng=random.Random(7))
    delays = [backoff.delay(3) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # jitter actually spreads retries


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(base_s=1, cap_s=60, jitter=0).delay(10_000) == 60


@pytest.mark.parametrize(
    "kwargs",
    [{"base_s": 0}, {"base_s": 5, "cap_s": 1}, {"jitter": 1.5}, {"jitter": -0.1}],
)
def test_invalid_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff().delay(-1)
