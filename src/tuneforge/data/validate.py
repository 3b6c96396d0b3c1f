"""Validation: the checks OpenAI's fine-tuning API runs on a dataset, with the same codes, plus ours.

Errors reject the record (`drop_invalid`); warnings are reported and the record is kept. Every problem names
the record's source (file:line) and the field, e.g. `messages[2].role`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuneforge.data.schema import ROLES, Example, Message, Problem, Reject, Source


def validate(examples: Sequence[Example], min_examples: int = 10) -> list[Problem]:
    """Every problem of every record, then the dataset-level ones."""
    problems = [p for ex in examples for p in validate_example(ex)]
    if len(examples) < min_examples:
        message = f"{len(examples)} examples; at least {min_examples} are needed"
        problems.append(Problem("error", "invalid_n_examples", message))
    return problems


def drop_invalid(examples: Sequence[Example]) -> tuple[list[Example], list[Reject], list[Problem]]:
    """Split records into those kept and those with errors; returns (kept, rejects, warnings of kept records)."""
    kept: list[Example] = []
    rejects: list[Reject] = []
    warnings: list[Problem] = []
    for ex in examples:
        problems = validate_example(ex)
        errors = [p for p in problems if p.severity == "error"]
        if not errors:
            kept.append(ex)
            warnings.extend(problems)
            continue
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        reason = f"{first.code}: {first.message}{more}"  # the code first: reports count rejects by it
        rejects.append(Reject("validate", reason, ex.source, field=first.field, record=ex))
    return kept, rejects, warnings


@dataclass
class _Findings:
    """The problems of one record, all naming its source."""

    source: Source | None
    problems: list[Problem] = field(default_factory=list)

    def error(self, code: str, message: str, where: str) -> None:
        self.problems.append(Problem("error", code, message, self.source, where))

    def warning(self, code: str, message: str, where: str) -> None:
        self.problems.append(Problem("warning", code, message, self.source, where))


def validate_example(ex: Example) -> list[Problem]:
    found = _Findings(ex.source)
    if ex.kind == "chat":
        _check_turns(ex.messages, "messages", found, need_assistant=True)
    elif ex.kind == "preference":
        _check_preference(ex, found)
    elif ex.kind == "classification":
        if not (ex.text or "").strip():
            found.error("empty_text", "the text to classify is empty", "text")
        if ex.label is None or not str(ex.label).strip():
            found.error("missing_label", "the record has no label", "label")
    elif ex.kind == "text":
        if not (ex.text or "").strip():
            found.error("empty_text", "the text is empty", "text")
    else:
        found.error("invalid_kind", f"unknown record kind {ex.kind!r}", "kind")
    return found.problems


def _check_preference(ex: Example, found: _Findings) -> None:
    if ex.chosen is None and ex.rejected is None:
        if ex.desirable is None:
            message = "preference record has neither chosen/rejected replies nor a desirable label"
            found.error("missing_preference", message, "chosen")
        else:  # unpaired (KTO): the whole conversation, answer included, is judged
            _check_turns(ex.messages, "messages", found, need_assistant=True)
        return
    if not ex.messages:
        found.error("missing_messages", "the prompt has no messages", "messages")
    else:
        _check_turns(ex.messages, "messages", found, need_assistant=False)
    for name, reply in (("chosen", ex.chosen), ("rejected", ex.rejected)):
        if not reply:
            found.error(f"missing_{name}", f"the record has no {name} reply", name)
        else:
            _check_turns(reply, name, found, need_assistant=True, sequence=False)
    if ex.chosen and ex.rejected and _same(ex.chosen, ex.rejected):
        found.warning("identical_pair", "chosen and rejected are identical: nothing to learn", "chosen")


def _same(a: list[Message], b: list[Message]) -> bool:
    return [(m.role, m.content) for m in a] == [(m.role, m.content) for m in b]


def _check_turns(
    msgs: list[Message], name: str, found: _Findings, need_assistant: bool, sequence: bool = True
) -> None:
    """Checks on a list of turns; `sequence` adds the checks on their order (off for a lone reply)."""
    if not msgs:
        found.error("missing_messages", f"{name} is empty", name)
        return
    for i, m in enumerate(msgs):
        _check_message(m, f"{name}[{i}]", found)
    if sequence:
        _check_order(msgs, name, found)
    assistant = [m for m in msgs if m.role == "assistant"]
    if need_assistant and not assistant:
        found.error("no_assistant_message", f"{name} has no assistant message to learn from", name)
    elif assistant and all(m.weight == 0 for m in assistant):
        found.warning("no_trained_tokens", "every assistant message has weight 0: nothing is trained", name)


def _check_message(m: Message, where: str, found: _Findings) -> None:
    if m.role not in ROLES:
        found.error("invalid_role", f"role {m.role!r} is not one of {', '.join(ROLES)}", f"{where}.role")
    if not (m.content or "").strip() and not (m.role == "assistant" and m.tool_calls):
        found.error("empty_content", f"the {m.role} message has no content", f"{where}.content")
    w = m.weight
    if w is not None and w not in (0, 1):
        if math.isnan(w) or w < 0:
            found.error("invalid_weight", f"weight {w} must be 0 or 1", f"{where}.weight")
        else:
            message = f"weight {w}: OpenAI accepts only 0 or 1; tuneforge scales this turn's loss by it"
            found.warning("invalid_weight", message, f"{where}.weight")
    for j, call in enumerate(m.tool_calls or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            found.error("invalid_tool_call", "the tool call has no function name", f"{where}.tool_calls[{j}]")


def _check_order(msgs: list[Message], name: str, found: _Findings) -> None:
    called = False  # an assistant tool call has been made, so a tool result may follow
    for i, m in enumerate(msgs):
        where = f"{name}[{i}]"
        if m.role == "assistant" and m.tool_calls:
            called = True
        if i and m.role == msgs[i - 1].role and m.role != "tool":  # several tool results in a row are normal
            found.warning(
                "consecutive_roles",
                f"two {m.role} turns in a row ({name}[{i - 1}] and {where})",
                f"{where}.role",
            )
        if m.role == "tool" and not called:
            found.warning("orphan_tool_message", "tool result without an earlier assistant tool call", where)
