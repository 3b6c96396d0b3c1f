from tests.jobs.service_fixtures import tiny_base  # noqa: F401  (a tiny model LoRA can move)
