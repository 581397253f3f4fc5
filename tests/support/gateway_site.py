"""A gateway's surroundings for Ray tests: settings on free loopback ports, storage, the site's
destination and filters. The reference service comes from serve.reference.main.running_reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.imaging.filters import FilterSpec
from petray.settings import Settings, load_settings
from petray.site.siteconfig import add_destination_and_filters, get_site_config
from petray.site.storage import prepare_storage
from tests.support.peers import free_port

# Test series are small: the default minimum of 10 images would refuse some of them.
TEST_MIN_IMAGES = 5


def site_settings(home: Path, **overrides: Any) -> Settings:
    """Fast retries, no fsync, no dashboard, every port free on loopback."""
    values: dict[str, Any] = {
        "home": home,
        "dicom_port": free_port(),
        "http_port": free_port(),
        "dashboard": False,
        "retry_base_s": 0.2,
        "retry_cap_s": 1.0,
        "fsync": False,
        **overrides,
    }
    return load_settings(**values)


def prepare_site(
    settings: Settings,
    *,
    destination: tuple[str, int] | None,
    filters: Sequence[FilterSpec] = (),
    **site_config: Any,
) -> sessionmaker[Session]:
    """Storage and seed data, one destination ``(AE title, port)`` on loopback, the filters."""
    prepare_storage(settings)
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with unit_of_work(sessions) as session:
        config = get_site_config(session=session)
        config.min_images = TEST_MIN_IMAGES
        for name, value in site_config.items():
            setattr(config, name, value)
        if destination is not None:
            add_destination_and_filters(
                session=session,
                name="pacs",
                ae_title=destination[0],
                host="127.0.0.1",
                port=destination[1],
                filters=filters,
            )
    return sessions
