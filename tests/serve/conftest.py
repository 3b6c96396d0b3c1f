from tests.jobs.service_fixtures import capitals_jsonl, db_url, postgres, tiny_base  # noqa: F401
