"""Backoff: capped, exponential, jittered within bounds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from petray.domain import Stage
from petray.retry import Backoff, RetryPolicy, format_duration, retry_policy_for
from petray.settings import load_settings


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


# --- issue 8: retries end ---


def test_policy_gives_the_backoff_delay_within_the_budget() -> None:
    policy = RetryPolicy(backoff=Backoff(base_s=1, cap_s=60, jitter=0), budget_s=3600)
    assert [policy.next_delay(failures=n, elapsed_s=0) for n in (1, 2, 3, 8)] == [1, 2, 4, 60]


def test_policy_places_the_last_attempt_at_the_end_of_the_budget_then_gives_up() -> None:
    policy = RetryPolicy(backoff=Backoff(base_s=1, cap_s=60, jitter=0), budget_s=100)
    assert policy.next_delay(failures=9, elapsed_s=90) == 10
    assert policy.next_delay(failures=10, elapsed_s=100) is None
    assert policy.next_delay(failures=10, elapsed_s=250) is None


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(backoff=Backoff(), budget_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(backoff=Backoff(), budget_s=10).next_delay(failures=0, elapsed_s=0)


def test_delivery_gets_its_own_budget(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, service_retry_budget_s=60, delivery_retry_budget_s=7200)
    assert retry_policy_for(Stage.SENDING, settings).budget_s == 7200
    for stage in (Stage.VALIDATING, Stage.UPLOADING, Stage.DOWNLOADING, Stage.UNPACKING):
        assert retry_policy_for(stage, settings).budget_s == 60


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (42.4, "42 s"),
        (95, "1 min 35 s"),
        (600, "10 min"),
        (7300, "2 h 1 min"),
        (86400, "24 h"),
    ],
)
def test_durations_read_like_a_person_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
