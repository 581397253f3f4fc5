"""What a gateway's home needs before any actor starts: directories, schema, seed data."""

from __future__ import annotations

from petray.db.engine import make_engine, make_sessionmaker, migrate, unit_of_work
from petray.settings import Settings
from petray.site.radiopharm import seed_radiopharmaceuticals
from petray.site.siteconfig import get_site_config


def prepare_storage(settings: Settings) -> None:
    """Directories, schema and seed data: everything the actors expect to find."""
    settings.ensure_dirs()
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        with unit_of_work(make_sessionmaker(engine)) as session:
            get_site_config(session=session)
            seed_radiopharmaceuticals(session=session)
    finally:
        engine.dispose()
