"""Site configuration row and the devices table, on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Device, SiteConfig
from petray.errors import ConfigurationError
from petray.settings import Settings
from petray.site.siteconfig import (
    Listener,
    add_device,
    calling_ae_whitelist,
    destinations,
    effective_listener,
    effective_remote_url,
    get_site_config,
    list_devices,
    remove_device,
    validate_ae_title,
)


def device(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": "pacs",
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": 4242,
        "is_source": False,
        "is_destination": True,
    }
    values.update(overrides)
    return values


def test_site_config_defaults_are_created_once(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        config = get_site_config(session=session)
        assert get_site_config(session=session) is config
    with unit_of_work(sessions) as session:
        config = get_site_config(session=session)
        assert session.scalar(select(func.count()).select_from(SiteConfig)) == 1
        assert config.id == 1
        assert config.min_images == 10
        assert config.slice_gap_tolerance == 1.5
        assert config.inactivity_wait_s == 5.0
        assert config.abort_timeout_s == 600.0
        assert config.reply_to_sender is False
        assert config.restrict_sources is False
        assert (config.ae_title, config.dicom_port, config.remote_url) == (None, None, None)


def test_site_config_changes_persist(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        get_site_config(session=session).min_images = 25
    with sessions() as session:
        assert get_site_config(session=session).min_images == 25


def test_add_list_and_remove_devices(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        added = add_device(
            session=session,
            **device(name="scanner", ae_title=" PETCT ", is_source=True, is_destination=False),
        )
        assert added.id is not None
        add_device(session=session, **device(name="archive"))
    with unit_of_work(sessions) as session:
        devices = list_devices(session=session)
        assert [d.name for d in devices] == ["archive", "scanner"]
        # AE titles are stored without the padding a user may type (PS3.5 6.2).
        assert devices[1].ae_title == "PETCT"
        assert [d.name for d in destinations(session=session)] == ["archive"]
        remove_device("archive", session=session)
    with sessions() as session:
        assert [d.name for d in list_devices(session=session)] == ["scanner"]
        assert destinations(session=session) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ae_title": ""}, "AE title"),
        ({"ae_title": "A" * 17}, "AE title"),
        ({"ae_title": "BAD\\AE"}, "AE title"),
        ({"port": 0}, "port 0 out of range"),
        ({"port": 65536}, "port 65536 out of range"),
        ({"host": "  "}, "host"),
        ({"name": ""}, "name"),
        ({"is_source": False, "is_destination": False}, "source, a destination or both"),
    ],
)
def test_add_device_rejects_invalid_values(
    sqlite_sessions: sessionmaker[Session], overrides: dict[str, Any], message: str
) -> None:
    with sqlite_sessions() as session:
        with pytest.raises(ConfigurationError, match=message):
            add_device(session=session, **device(**overrides))
        assert list_devices(session=session) == []


def test_add_device_rejects_a_duplicate_name(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        add_device(session=session, **device())
    with unit_of_work(sessions) as session, pytest.raises(ConfigurationError, match="already"):
        add_device(session=session, **device(ae_title="OTHER"))
    with unit_of_work(sessions) as session, pytest.raises(ConfigurationError, match="already"):
        # The stored name is stripped, so a padded copy is the same name.
        add_device(session=session, **device(name=" pacs "))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 1


def test_remove_unknown_device(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(ConfigurationError, match="no device named"):
        remove_device("ghost", session=session)


def test_validate_ae_title_strips_padding() -> None:
    assert validate_ae_title("  PETRAY ") == "PETRAY"
    assert validate_ae_title("A" * 16) == "A" * 16


def test_effective_listener_prefers_the_site_override(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        assert effective_listener(settings, session=session) == Listener(
            ae_title=settings.ae_title, port=settings.dicom_port, bind=settings.dicom_bind
        )
        assert effective_remote_url(settings, session=session) == settings.remote_url
        config = get_site_config(session=session)
        config.ae_title, config.dicom_port = "GATEWAY2", 11113
        config.remote_url = "http://127.0.0.1:9999"
    with sessions() as session:
        listener = effective_listener(settings, session=session)
        assert (listener.ae_title, listener.port) == ("GATEWAY2", 11113)
        assert listener.bind == settings.dicom_bind
        assert effective_remote_url(settings, session=session) == "http://127.0.0.1:9999"


def test_any_source_is_allowed_unless_restricted(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        add_device(
            session=session,
            **device(name="scanner", ae_title="PETCT", is_source=True, is_destination=False),
        )
        add_device(session=session, **device(name="pacs", ae_title="PACS"))
        assert calling_ae_whitelist(session=session) == []
    with unit_of_work(sessions) as session:
        get_site_config(session=session).restrict_sources = True
    with sessions() as session:
        # A destination-only device may receive from us but not store to us.
        assert calling_ae_whitelist(session=session) == ["PETCT"]
