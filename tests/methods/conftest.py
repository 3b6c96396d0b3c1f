from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_wide_init_dir(tmp_path_factory, smol_dir) -> Path:
    """The tiny Llama of tests/conftest.py, initialised with a larger spread (0.3 instead of 0.02).

    With the usual 0.02 the tied embeddings are so small that a frozen head caps every logit near 1: methods that
    keep the base frozen (adapters, prompts) cannot move the loss far from ln(vocab), whatever they learn."""
    return build_tiny_llama(smol_dir, tmp_path_factory.mktemp("tiny-wide"), initializer_range=0.3)
