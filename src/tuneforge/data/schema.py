"""The one internal record every input format is normalised into.

Readers (formats.py) turn rows of JSONL/JSON/CSV/Parquet/XML files into `Example`s; everything downstream
(cleaning, validation, splitting, tokenisation, evaluation) sees only `Example`s. A `Source` travels with each
record so that every problem and every rejected record can name the file and line it came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ROLES = ("system", "user", "assistant", "tool")

Kind = Literal["chat", "text", "classification", "preference"]


@dataclass
class Source:
    """Where a record came from: the file, its 1-based line (JSONL, CSV) or record number (JSON, Parquet, XML)."""

    path: str
    index: int  # 0-based position among the file's records
    line: int | None = None  # 1-based line number where the format has lines

    def where(self) -> str:
        if self.line is not None:
            return f"{self.path}:{self.line}"
        return f"{self.path} record {self.index + 1}"


@dataclass
class Message:
    """One turn of a conversation, in OpenAI's chat shape."""

    role: str  # one of ROLES
    content: str
    # Training weight of this turn (OpenAI's `weight`, LLaMA-Factory's `loss_weight`): None means "use the
    # run's policy" (assistant turns trained, others not); 0 means never trained; 1 means trained.
    weight: float | None = None
    # Assistant tool calls in OpenAI's shape: [{"type": "function", "function": {"name", "arguments"}}]
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None  # tool name on role "tool" messages
    tool_call_id: str | None = None


@dataclass
class Example:
    """A normalised training/evaluation record.

    kind="chat":           `messages` is the whole conversation (system/user/assistant/tool turns).
    kind="text":           `text` is a raw document for continued pre-training.
    kind="classification": `text` is the input, `label` the class.
    kind="preference":     `messages` is the prompt (ending before the answer); `chosen`/`rejected` are the
                           preferred and dispreferred assistant turns. Unpaired feedback (KTO) has `messages`
                           as the whole conversation, no chosen/rejected, and `desirable` True/False.
    """

    kind: Kind
    messages: list[Message] = field(default_factory=list)
    text: str | None = None
    label: str | None = None
    chosen: list[Message] | None = None
    rejected: list[Message] | None = None
    desirable: bool | None = None
    tools: list[dict[str, Any]] | None = None  # function specs offered to the model (OpenAI `tools`)
    source: Source | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # -- views used by cleaning, splitting and evaluation -------------------------------------------------
    def prompt_messages(self) -> list[Message]:
        """The turns given to the model before its answer (everything up to the last assistant turn)."""
        if self.kind == "preference" and self.chosen is not None:
            return list(self.messages)
        if self.kind == "classification":
            return [Message("user", self.text or "")]
        msgs = list(self.messages)
        last = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=None)
        return msgs if last is None else msgs[:last]

    def is_pair(self) -> bool:
        """A preference record with both a chosen and a rejected answer (what DPO/ORPO train on)."""
        return self.kind == "preference" and bool(self.chosen) and bool(self.rejected)

    def answer(self) -> str | None:
        """The reference answer: the last assistant turn, the label, or the chosen reply."""
        if self.kind == "classification":
            return self.label
        if self.kind == "preference" and self.chosen:
            return self.chosen[-1].content
        if self.kind == "text":
            return None
        for m in reversed(self.messages):
            if m.role == "assistant":
                return m.content
        return None

    def all_text(self) -> str:
        """Every piece of text in the record, for duplicate detection and length statistics."""
        parts: list[str] = []
        if self.text:
            parts.append(self.text)
        if self.label is not None:
            parts.append(str(self.label))
        for group in (self.messages, self.chosen or [], self.rejected or []):
            for m in group:
                parts.append(f"{m.role}: {m.content}")
        return "\n".join(parts)

    def fingerprint(self) -> str:
        """Stable content hash (ignores the source), used for exact de-duplication and split bookkeeping."""
        payload = self.to_dict()
        payload.pop("source", None)
        payload.pop("meta", None)
        raw = json.dumps(payload, sort_keys=True, ensure_ascii=False)
        return hashlib.sha1(raw.encode("utf-8")).hexdigest()[:16]

    # -- (de)serialisation: the prepared splits are written as JSONL of these dicts -----------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, [], {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        def msgs(v):
            return None if v is None else [Message(**m) for m in v]

        return cls(
            kind=d["kind"],
            messages=msgs(d.get("messages")) or [],
            text=d.get("text"),
            label=d.get("label"),
            chosen=msgs(d.get("chosen")),
            rejected=msgs(d.get("rejected")),
            desirable=d.get("desirable"),
            tools=d.get("tools"),
            source=Source(**d["source"]) if d.get("source") else None,
            meta=d.get("meta") or {},
        )


@dataclass
class Reject:
    """A record that was dropped or changed, with the reason. Written to the run's rejects file."""

    stage: str  # "read" | "normalise" | "clean" | "validate" | "tokenize"
    reason: str
    source: Source | None = None
    field: str | None = None
    record: Any = None  # the raw row or the Example as a dict
    action: str = "dropped"  # "dropped" | "truncated" | "filled" | "split"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "action": self.action,
            "reason": self.reason,
            "where": self.source.where() if self.source else None,
            "field": self.field,
            "record": self.record.to_dict() if isinstance(self.record, Example) else self.record,
        }


@dataclass
class Problem:
    """A validation finding. Errors reject the record; warnings are reported and the record is kept."""

    severity: Literal["error", "warning"]
    code: str  # stable machine-readable code, e.g. "no_assistant_message"
    message: str
    source: Source | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.source.where() if self.source else "dataset"
        fld = f", {self.field}" if self.field else ""
        return f"{where}{fld}: {self.message}"
