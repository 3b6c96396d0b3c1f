"""Retrieval with the real all-MiniLM-L6-v2 from its PyPI package."""

from __future__ import annotations

import pytest

from tuneforge.data.schema import Example, Message
from tuneforge.experiments import rag


@pytest.fixture(scope="module")
def embedder():
    return rag.Embedder()


def test_embeddings_are_unit_vectors_and_similar_texts_are_close(embedder):
    v = embedder.encode(["The cat sits on the mat.", "A cat is sitting on a mat.", "Quarterly tax filing"])
    assert v.shape == (3, 384)
    assert abs(float(v[0].norm()) - 1) < 1e-4
    assert float(v[0] @ v[1]) > 0.7 > float(v[0] @ v[2]) + 0.3


def test_documents_retrieve_the_passage_that_answers(tmp_path, embedder):
    (tmp_path / "policies.md").write_text(
        "Refunds are issued within 14 days of a returned order.\n\n"
        "Our office in Lisbon is open Monday to Friday, 9:00 to 17:00.\n\n"
        "Passwords must be at least 12 characters and rotated every 90 days."
    )
    (tmp_path / "shipping.txt").write_text("Parcels to Norway ship with DHL and take four working days.")
    index = rag.Index.build(rag.document_passages(tmp_path), embedder)
    assert len(index.passages) == 4
    hits = index.search(
        ["How long until I get my money back after returning something?", "delivery time to Oslo"], k=2
    )
    assert hits[0][0][0].source == "policies.md:1"
    assert hits[1][0][0].source == "shipping.txt:1"
    assert hits[0][0][1] >= hits[0][1][1]


def test_training_examples_retrieve_the_closest_question(embedder):
    qa = {
        "My invoice charged me twice": "billing",
        "The app crashes when I open settings": "bug",
        "How do I add a teammate to my workspace?": "account",
    }
    train = [Example("chat", [Message("user", q), Message("assistant", a)]) for q, a in qa.items()]
    index = rag.Index.build(rag.example_passages(train), embedder)
    (hit,) = index.search(["I was billed two times this month"], k=1)
    assert hit[0][0].example is train[0]


def test_missing_documents_folder_is_a_clear_error(tmp_path):
    from tuneforge.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        rag.document_passages(tmp_path / "nope")
