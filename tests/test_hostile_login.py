"""Login rate limiting per client address (issue 9: a stranger could keep admin locked out)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from petray.db.engine import unit_of_work
from petray.site.login_throttle import ADDRESS_FREE_FAILURES, MEMORY, LoginThrottle
from petray.site.users import FREE_FAILURES, get_user_by_name, lockout_delay
from tests.support.app import PASSWORDS, AppHarness, harness, login

__all__ = ["harness"]  # the fixture

STRANGER = "10.0.0.66"
ADMIN_DESK = "10.0.0.5"
WARD = "10.0.0.7"
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def client_at(harness: AppHarness, address: str) -> TestClient:
    """Another browser on the same app, connecting from ``address``."""
    return TestClient(harness.client.app, base_url="http://127.0.0.1", client=(address, 40000))


def test_a_stranger_no_longer_locks_admin_out_for_everyone(harness: AppHarness) -> None:
    stranger = client_at(harness, STRANGER)
    for _ in range(FREE_FAILURES + 1):
        assert login(stranger, "admin", "not-the-password").status_code == 401
    with unit_of_work(harness.sessions) as session:
        admin = get_user_by_name("admin", session=session)
        assert admin is not None and admin.locked_until is not None  # the user lock still holds
    # ... for the address that failed, even with the right password (it may have guessed it),
    guessed = login(stranger, "admin", PASSWORDS["admin"])
    assert guessed.status_code == 429
    assert "Too many failed attempts. Try again in" in guessed.text
    # ... but not for admin at their own desk.
    desk = client_at(harness, ADMIN_DESK)
    response = login(desk, "admin", PASSWORDS["admin"])
    assert response.status_code == 303, response.text
    assert desk.get("/api/v1/me").json() == {"name": "admin", "role": "admin"}


def test_an_address_that_keeps_failing_waits_whatever_user_it_tries(harness: AppHarness) -> None:
    stranger = client_at(harness, STRANGER)
    for attempt in range(ADDRESS_FREE_FAILURES):
        # A different user each time, so no user lock is what stops it.
        response = login(stranger, f"user{attempt}", "not-the-password")
        assert response.status_code == 401, attempt
    assert login(stranger, "nobody", "not-the-password").status_code == 401  # one over: blocked
    blocked = login(stranger, "viewer", PASSWORDS["viewer"])
    assert blocked.status_code == 429
    assert "Too many failed attempts from your address. Try again in" in blocked.text
    # Everyone else logs in as before.
    assert login(client_at(harness, WARD), "viewer", PASSWORDS["viewer"]).status_code == 303


def test_a_failing_address_gets_one_guess_against_a_locked_user(harness: AppHarness) -> None:
    for _ in range(FREE_FAILURES + 1):
        login(client_at(harness, STRANGER), "operator", "not-the-password")
    # A fresh address is not subject to the lock: its wrong guess counts, and then it is.
    second = client_at(harness, "10.0.0.67")
    assert login(second, "operator", "still-not-it!").status_code == 401
    assert login(second, "operator", PASSWORDS["operator"]).status_code == 429


def test_throttle_blocks_with_a_growing_delay_then_forgets() -> None:
    throttle = LoginThrottle(free_failures=3)
    for _ in range(3):
        throttle.failed(STRANGER, now=T0)
    assert throttle.has_failed(STRANGER, now=T0)
    assert throttle.retry_after_s(STRANGER, now=T0) == 0  # free failures do not block
    throttle.failed(STRANGER, now=T0)
    first = throttle.retry_after_s(STRANGER, now=T0)
    assert first == int(lockout_delay(FREE_FAILURES + 1).total_seconds()) + 1
    throttle.failed(STRANGER, now=T0)
    assert throttle.retry_after_s(STRANGER, now=T0) > first
    assert not throttle.has_failed(WARD, now=T0)
    later = T0 + MEMORY + timedelta(seconds=1)
    assert throttle.retry_after_s(STRANGER, now=later) == 0
    assert not throttle.has_failed(STRANGER, now=later)


def test_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(max_addresses=100)
    for n in range(250):
        throttle.failed(f"10.1.{n // 256}.{n % 256}", now=T0)
    assert not throttle.has_failed("10.1.0.0", now=T0)  # the oldest were forgotten
    assert throttle.has_failed("10.1.0.249", now=T0)
    assert sum(throttle.has_failed(f"10.1.0.{n}", now=T0) for n in range(250)) == 100
