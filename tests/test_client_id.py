"""The client id sent to the service: PETRAY_CLIENT_ID until an admin sets one (issue 11)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.settings import Settings
from petray.site.siteconfig import effective_client_id, get_site_config


def test_the_console_value_wins_over_the_setting(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, client_id="from-env")
    with unit_of_work(sessions) as session:
        assert effective_client_id(settings, session=session) == "from-env"
        get_site_config(session=session).client_id = "hospital-a"
    with unit_of_work(sessions) as session:
        assert effective_client_id(settings, session=session) == "hospital-a"
