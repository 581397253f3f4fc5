"""Failed logins counted per client address (issue 9: lockout could be abused).

The per-user lockout alone let anyone lock ``admin`` out for everyone: five wrong passwords from
any address and even the right password got 429. Counting failures per address as well gives
two rules that together keep guessing slow without handing strangers a denial of service:

- an address that keeps failing is itself refused for a growing while (whatever user it tries);
- the per-user lockout holds only for addresses with recent failures: the right password from an
  address that has not failed lately still logs in, so a stranger elsewhere cannot keep a user out.

Someone guessing from many addresses gets one guess per fresh address while the user is locked,
then that address is subject to the lock too. The counts live in the memory of the HTTP process
(one Serve replica): a restart forgets them, the per-user lockout in the database remains.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from petray.site.users import FREE_FAILURES, LOCKOUT_MAX, lockout_delay

# A hospital's workstations may share one address behind a proxy or NAT, so an address is
# allowed more typos than one user before it waits.
ADDRESS_FREE_FAILURES = 10
# A failure is "recent" this long; the longest lockout, so a blocked address is remembered.
MEMORY = LOCKOUT_MAX
# Bounded, so a scan from a whole subnet cannot grow it without end (oldest forgotten first).
MAX_ADDRESSES = 10_000


@dataclass
class _Failures:
    count: int
    last: datetime
    blocked_until: datetime | None = None


class LoginThrottle:
    """Failed logins per client address; thread-safe (sync routes run in a thread pool)."""

    def __init__(
        self,
        *,
        free_failures: int = ADDRESS_FREE_FAILURES,
        memory: timedelta = MEMORY,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._free = free_failures
        self._memory = memory
        self._max = max_addresses
        self._lock = threading.Lock()
        self._by_address: OrderedDict[str, _Failures] = OrderedDict()

    def _current(self, address: str, now: datetime) -> _Failures | None:
        record = self._by_address.get(address)
        if record is None:
            return None
        blocked = record.blocked_until is not None and record.blocked_until > now
        if not blocked and now - record.last > self._memory:
            del self._by_address[address]
            return None
        return record

    def retry_after_s(self, address: str, *, now: datetime | None = None) -> int:
        """Seconds this address must wait before it may try again; 0 when it may now."""
        now = now or datetime.now(UTC)
        with self._lock:
            record = self._current(address, now)
            if record is None or record.blocked_until is None or record.blocked_until <= now:
                return 0
            return int((record.blocked_until - now).total_seconds()) + 1

    def has_failed(self, address: str, *, now: datetime | None = None) -> bool:
        """Whether this address failed a login recently (the per-user lockout applies to it)."""
        with self._lock:
            return self._current(address, now or datetime.now(UTC)) is not None

    def failed(self, address: str, *, now: datetime | None = None) -> int:
        """Count a failed login from ``address``; returns its recent failures."""
        now = now or datetime.now(UTC)
        with self._lock:
            record = self._current(address, now)
            if record is None:
                record = self._by_address[address] = _Failures(count=0, last=now)
            self._by_address.move_to_end(address)
            record.count += 1
            record.last = now
            # The user lockout's schedule, shifted by the address's larger allowance.
            delay = lockout_delay(record.count - self._free + FREE_FAILURES)
            if delay:
                record.blocked_until = now + delay
            while len(self._by_address) > self._max:
                self._by_address.popitem(last=False)
            return record.count
