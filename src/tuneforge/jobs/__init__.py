"""Persistent fine-tuning jobs: the metadata store (SQLAlchemy) and the workers that run jobs."""
