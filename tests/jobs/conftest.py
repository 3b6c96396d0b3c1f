import pytest

from tests.jobs.service_fixtures import capitals_jsonl, db_url, postgres, tiny_base  # noqa: F401


@pytest.fixture
def sessions(db_url):  # noqa: F811 - db_url is the fixture imported above
    """A store on the test's database (SQLite, and PostgreSQL where its server binaries are present)."""
    from tuneforge.jobs import store

    engine = store.make_engine(db_url)
    store.init_db(engine)
    yield store.session_factory(engine)
    engine.dispose()
