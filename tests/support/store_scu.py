"""The StoreSCU actor's class without Ray: its methods are plain Python over the database.

One helper for every test that drives it directly (delivery audit, STOW-RS, early delivery), so
a new attribute of the actor is set here once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from actors.store_scu import StoreScuActor
from petray.domain import Stage
from petray.retry import retry_policy_for
from petray.settings import Settings


class StrictMetric:
    """As strict as Ray's metrics: a counter's increment must be positive."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass


def store_scu(sessions: sessionmaker[Session], settings: Settings) -> Any:
    """The StoreSCU with its stage shell (retries, budget) and no early deliveries queued."""
    cls = StoreScuActor.__ray_metadata__.modified_class
    actor = cls.__new__(cls)
    actor.sessions, actor.settings = sessions, settings
    actor.policy = retry_policy_for(Stage.SENDING, settings)
    actor._m_sent = actor._m_bytes = actor._m_outcomes = StrictMetric()
    actor._m_tasks = actor._m_retries = actor._m_duration = StrictMetric()
    actor._processed = actor._failed = 0
    actor._early, actor._series_locks = {}, {}
    actor._early_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-early")
    return actor
