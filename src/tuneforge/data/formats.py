"""Record formats: detect which one a file uses, and normalise its rows into `Example`s.

Formats (`data.format`), each recognised by its field names:

  chat               {"messages": [{"role", "content", "weight"?, "tool_calls"?}], "tools"?}        (OpenAI)
  sharegpt           {"conversations": [{"from", "value"}], "system"?, "tools"?}                (LLaMA-Factory)
  alpaca             {"instruction", "input"?, "output", "system"?, "history"?}
  prompt_completion  {"prompt", "completion"}
  text               {"text"}                                                  (continued pre-training)
  classification     {"text", "label"}
  preference         {"prompt", "chosen", "rejected"} and the other paired shapes (OpenAI DPO,
                     ShareGPT + chosen/rejected, chosen_messages/rejected_messages), or unpaired
                     {"messages", "label": true/false} (KTO)

`data.columns` renames the user's fields to ours before detection. A row that cannot be normalised becomes a
`Reject` (stage "normalise") naming the field and the reason; only problems with the whole file raise DataError.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.readers import read_rows
from tuneforge.data.schema import Example, Message, Reject, Source
from tuneforge.errors import DataError

FORMATS = ("chat", "alpaca", "sharegpt", "prompt_completion", "text", "classification", "preference")


@dataclass(frozen=True)
class Shape:
    """One way of writing a format: the fields a row must have, and those it may have."""

    format: str
    variant: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    accepts: Callable[[dict[str, Any]], bool] | None = None  # an extra test on the values

    @property
    def fields(self) -> set[str]:
        return set(self.required) | set(self.optional)

    def matches(self, row: dict[str, Any]) -> bool:
        return all(k in row for k in self.required) and (self.accepts is None or self.accepts(row))


def _boolish_label(row: dict[str, Any]) -> bool:
    # KTO's `label` is true/false; a chat file with a category `label` must not be read as KTO.
    return _parse_bool(row.get("label")) is not None


_CHAT_OPT = ("tools", "system")
# In priority order: the first shape whose fields a row has decides the row's format.
SHAPES: tuple[Shape, ...] = (
    Shape("preference", "openai_dpo", ("input", "preferred_output", "non_preferred_output"), ("tools",)),
    Shape("preference", "chosen_messages", ("chosen_messages", "rejected_messages"), _CHAT_OPT),
    Shape("preference", "conversations_pair", ("conversations", "chosen", "rejected"), _CHAT_OPT),
    Shape("preference", "messages_pair", ("messages", "chosen", "rejected"), _CHAT_OPT),
    Shape("preference", "alpaca_pair", ("instruction", "chosen", "rejected"), ("input", "system", "history")),
    Shape("preference", "prompt_pair", ("prompt", "chosen", "rejected"), _CHAT_OPT),
    Shape("preference", "implicit_pair", ("chosen", "rejected"), ("tools",)),
    Shape("preference", "kto_messages", ("messages", "label"), _CHAT_OPT, _boolish_label),
    Shape("preference", "kto_conversations", ("conversations", "label"), _CHAT_OPT, _boolish_label),
    Shape("preference", "kto_prompt", ("prompt", "completion", "label"), ("system",), _boolish_label),
    Shape("sharegpt", "sharegpt", ("conversations",), _CHAT_OPT),
    Shape("chat", "chat", ("messages",), _CHAT_OPT),
    Shape("alpaca", "alpaca", ("instruction", "output"), ("input", "system", "history")),
    Shape("prompt_completion", "prompt_completion", ("prompt", "completion"), ("system",)),
    Shape("classification", "classification", ("text", "label")),
    Shape("text", "text", ("text",)),
)
KNOWN_FIELDS = frozenset(f for s in SHAPES for f in s.fields)

# What each format needs, for the error when a forced format does not fit the file.
NEEDS = {
    "chat": "messages (a list of {role, content})",
    "sharegpt": "conversations (a list of {from, value})",
    "alpaca": "instruction and output (input, system, history optional)",
    "prompt_completion": "prompt and completion",
    "text": "text",
    "classification": "text and label",
    "preference": "prompt + chosen + rejected (or conversations/messages + chosen + rejected, "
    "chosen_messages + rejected_messages, input + preferred_output + non_preferred_output, "
    "or messages + a true/false label)",
}
# The shape named in the suggestion when a forced format does not fit.
PRIMARY = {"preference": "prompt_pair", "sharegpt": "sharegpt", "chat": "chat"}
# Shapes a forced format may use: chat and ShareGPT differ only in the name of the turn list.
_FORCED_FORMATS = {"chat": ("chat", "sharegpt"), "sharegpt": ("sharegpt", "chat")}

# Common names for our fields, applied when the file lacks our name (and data.columns does not say otherwise).
ALIASES: dict[str, tuple[str, ...]] = {
    "label": ("category", "class", "sentiment", "intent"),
    "text": ("sentence", "review", "document", "content"),
}
PAIR_ALIASES = (("question", "answer"), ("query", "response"), ("input", "output"))

ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
}


@dataclass
class LoadResult:
    """The examples of one file, the rows that could not be used, and what was detected."""

    path: str
    format: str  # detected or forced format name
    examples: list[Example]
    rejects: list[Reject]
    n_rows: int  # records read, including those rejected
    fields: list[str] = field(default_factory=list)  # field names found in the file (before data.columns)
    columns: dict[str, str] = field(default_factory=dict)  # renames applied: our name → the file's


class _Bad(Exception):
    """A row that cannot be normalised; becomes a Reject."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


# ---------------------------------------------------------------------------------------------- public
def load_file(
    path: str | Path,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
) -> LoadResult:
    """Read a data file and normalise its records. File-level problems raise DataError; row-level ones reject."""
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown data.format {format!r}", f"use auto or one of: {', '.join(FORMATS)}")
    p = Path(path)
    rows = read_rows(p)
    rejects = [r for _, r in rows if isinstance(r, Reject)]
    records = [(src, r) for src, r in rows if not isinstance(r, Reject)]
    if not records:
        first = rejects[0]
        raise DataError(
            f"no record of {p} could be read ({first.source.where() if first.source else p}: {first.reason})",
            f"check that the file is really {p.suffix.lstrip('.').upper()}",
        )
    # Field names in first-seen order, as the user wrote them (suggestions pair them up in that order).
    found = list(dict.fromkeys(str(k) for _, r in records for k in r))
    mapping = resolve_columns(p, found, columns or {}, format)
    records = [(src, rename(r, mapping)) for src, r in records]
    name, shapes = detect(p, [r for _, r in records], format, found, [src for src, _ in records])

    examples: list[Example] = []
    for (src, row), shape in zip(records, shapes, strict=True):
        try:
            ex = NORMALISERS[shape.variant](row)
        except _Bad as bad:
            rejects.append(Reject("normalise", bad.reason, src, field=bad.field, record=row))
            continue
        ex.source = src
        if system_prompt:
            _add_system_prompt(ex, system_prompt)
        examples.append(ex)
    rejects.sort(key=lambda r: r.source.index if r.source else -1)
    return LoadResult(str(p), name, examples, rejects, len(rows), found, mapping)


def normalise_row(row: dict[str, Any], format: str = "auto") -> Example:
    """Normalise one record given as a dict (e.g. from the API). Raises DataError with the reason if it cannot."""
    try:
        shape = _row_shape(row, _shapes_for(format)) or _first_shape(format)
        return NORMALISERS[shape.variant](row)
    except _Bad as bad:
        where = f"{bad.field}: " if bad.field else ""
        raise DataError(f"record cannot be used: {where}{bad.reason}", "fix the record's fields") from None


# ------------------------------------------------------------------------------------------- columns
def resolve_columns(
    p: Path, found: list[str], columns: dict[str, str], format: str = "auto"
) -> dict[str, str]:
    """The renames to apply: the user's data.columns, checked against the file, plus common aliases.

    Aliases (sentence → text, question/answer → prompt/completion ...) apply only where the file lacks our
    name and, when the format is forced, only for that format's fields.
    """
    for ours, theirs in columns.items():
        if ours not in KNOWN_FIELDS:
            raise DataError(
                f"data.columns maps an unknown field {ours!r}",
                f"the keys of data.columns are our field names: {', '.join(sorted(KNOWN_FIELDS))}",
            )
        if theirs not in found:
            raise DataError(
                f"data.columns maps {ours} to {theirs!r}, but {p} has no field {theirs!r} (its fields: {_list(found)})",
                "fix the column name in data.columns",
            )
    mapping = dict(columns)
    names = set(found) - set(mapping.values()) | set(mapping)
    mapping.update(_aliases(names, format))
    return mapping


_CONVERSATION_FIELDS = {"messages", "conversations", "instruction", "prompt", "chosen"}


def _aliases(names: set[str], format: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if names & _CONVERSATION_FIELDS:
        return out
    wanted = {"auto": ("label", "text"), "classification": ("label", "text"), "text": ("text",)}.get(
        format, ()
    )
    for ours in wanted:
        alias = next((a for a in ALIASES[ours] if a in names), None)
        if ours not in names and alias:
            out[ours] = alias
    if format in ("auto", "prompt_completion") and not names & {"completion", "text"}:
        pair = next(((q, a) for q, a in PAIR_ALIASES if {q, a} <= names), None)
        if pair:
            out.update(prompt=pair[0], completion=pair[1])
    return out


def rename(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """Rename the file's fields to ours (all at once, so that swapping two names works)."""
    if not mapping:
        return row
    theirs = set(mapping.values())
    out = {k: v for k, v in row.items() if k not in theirs}
    for ours, their in mapping.items():
        if their in row:
            out[ours] = row[their]
    return out


# ------------------------------------------------------------------------------------------ detection
def detect(
    p: Path, rows: list[dict[str, Any]], format: str, found: list[str], sources: list[Source] | None = None
) -> tuple[str, list[Shape]]:
    """The file's format name and the shape to normalise each row with."""
    shapes = _shapes_for(format)
    per_row = [_row_shape(r, shapes) for r in rows]
    matched = [s for s in per_row if s is not None]
    if not matched:
        raise _no_format_error(p, rows, format, found)
    dominant = Counter(s.variant for s in matched).most_common(1)[0][0]
    main = next(s for s in matched if s.variant == dominant)
    if format == "auto":
        _check_mixed(p, rows, per_row, main, sources)
    name = format if format != "auto" else main.format
    return name, [s if s is not None and s.format == main.format else main for s in per_row]


def _shapes_for(format: str) -> tuple[Shape, ...]:
    if format == "auto":
        return SHAPES
    allowed = _FORCED_FORMATS.get(format, (format,))
    return tuple(s for s in SHAPES if s.format in allowed)


def _first_shape(format: str) -> Shape:
    return _shapes_for(format)[0] if format != "auto" else next(s for s in SHAPES if s.variant == "chat")


def _row_shape(row: dict[str, Any], shapes: tuple[Shape, ...]) -> Shape | None:
    return next((s for s in shapes if s.matches(row)), None)


def _check_mixed(
    p: Path,
    rows: list[dict[str, Any]],
    per_row: list[Shape | None],
    main: Shape,
    sources: list[Source] | None,
) -> None:
    """Refuse a file whose rows are of different formats; a row that merely lacks fields is not 'another format'."""
    others: Counter[str] = Counter()
    first_at: dict[str, str] = {}
    for i, (row, shape) in enumerate(zip(rows, per_row, strict=True)):
        if shape is None or shape.format == main.format:
            continue
        if (KNOWN_FIELDS & row.keys()) <= main.fields:  # e.g. a classification row without its label
            continue
        others[shape.format] += 1
        first_at.setdefault(shape.format, sources[i].where() if sources else f"record {i + 1}")
    if not others:
        return
    n_main = sum(1 for s in per_row if s is not None and s.format == main.format)
    parts = [f"{n_main} rows look like {main.format}"] + [f"{n} like {f}" for f, n in others.most_common()]
    first = others.most_common(1)[0][0]
    raise DataError(
        f"{p} mixes formats: {', '.join(parts)} (the first {first} row is {first_at[first]})",
        "put each format in its own file, or set data.format to read every row as one format",
    )


def _no_format_error(p: Path, rows: list[dict[str, Any]], format: str, found: list[str]) -> DataError:
    if format == "auto":
        return DataError(
            f"could not detect the format of {p} from its fields [{_list(found)}]",
            f"set data.format or map columns with data.columns, e.g. {_example_mapping(rows, found)}",
        )
    names = list(dict.fromkeys(k for r in rows for k in r))  # after data.columns
    if format == "classification" and "text" in names:
        others = [f for f in found if f not in ("text", *ALIASES["text"])]
        eg = f" e.g. {{label: {others[0]}}}" if others else ""
        return DataError(
            f"format classification needs a label field, but {p} has fields [{_list(found)}]",
            f"name the label column with data.columns,{eg}" if eg else "add a label to every record",
        )
    primary = next(s for s in SHAPES if s.variant == PRIMARY.get(format, format))
    wanted = [f for f in primary.required if f not in names]
    unused = [f for f in names if f not in KNOWN_FIELDS]
    eg = _pairs(wanted, unused)
    fix = (
        f"map your fields with data.columns, e.g. {eg}"
        if eg
        else "check data.format, or map your fields with data.columns"
    )
    return DataError(f"format {format} needs {NEEDS[format]}, but {p} has fields [{_list(found)}]", fix)


def _example_mapping(rows: list[dict[str, Any]], found: list[str]) -> str:
    strings = [f for f in found if any(isinstance(r.get(f), str) for r in rows[:20])] or found
    if len(strings) >= 2:
        return _pairs(["prompt", "completion"], strings) or "{prompt: ..., completion: ...}"
    return f"{{text: {strings[0]}}}" if strings else "{text: ...}"


def _pairs(ours: list[str], theirs: list[str]) -> str:
    pairs = list(zip(ours, theirs, strict=False))
    return "{" + ", ".join(f"{a}: {b}" for a, b in pairs) + "}" if pairs else ""


def _list(names: list[str], limit: int = 15) -> str:
    if not names:
        return "none"
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ------------------------------------------------------------------------------------- value helpers
def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))  # NaN: pandas' missing value


def _parse_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float) and not _missing(v) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        return {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}.get(
            v.strip().lower()
        )
    return None


def _json_value(v: Any, where: str) -> Any:
    """Structured fields may arrive as JSON text (CSV cells, XML elements, ShareGPT `tools`)."""
    if isinstance(v, str) and v.strip()[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except json.JSONDecodeError as e:
            raise _Bad(where, f"not valid JSON: {where} is text that is not valid JSON ({e.msg})") from None
    return v


def _turns_in_text(v: Any) -> Any:
    """Text that holds JSON messages (a CSV cell) becomes those messages; any other text stays text.

    Used for fields that may be either (prompt, completion, chosen, rejected): an answer that happens to be
    JSON, or a prompt starting with "[INST]", is text to train on, not a malformed list of messages.
    """
    if not (isinstance(v, str) and v.strip()[:1] in ("[", "{")):
        return v
    try:
        parsed = json.loads(v)
    except json.JSONDecodeError:
        return v
    items = parsed if isinstance(parsed, list) else [parsed]
    is_turn = [isinstance(d, dict) and ("role" in d or "from" in d) for d in items]
    return parsed if items and all(is_turn) else v


def _type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean"}.get(type(v), type(v).__name__)


def _string(row: dict[str, Any], key: str) -> str:
    """A required text field."""
    v = row.get(key)
    if _missing(v):
        raise _Bad(key, f"missing field: {key}")
    return _to_text(v, key)


def _to_text(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    raise _Bad(where, f"wrong type: {where} must be text, not {_type(v)}")


def _label(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # 1.0 from a pandas column is the class "1"
    if isinstance(v, str | int | float):
        return str(v)
    raise _Bad("label", f"wrong type: label must be one value (text or a number), not {_type(v)}")


# ------------------------------------------------------------------------------------------ messages
def _content(v: Any, where: str) -> str:
    """Message content: a string, or a list of typed parts (OpenAI {"type","text"}, LLaMA-Factory {"type","value"})."""
    if _missing(v):
        return ""
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list):
        return _to_text(v, where)
    texts: list[str] = []
    for i, part in enumerate(v):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise _Bad(f"{where}[{i}]", f"wrong type: {where}[{i}] must be a text part, not {_type(part)}")
        kind = part.get("type", "text")
        if kind not in ("text", "input_text", "output_text"):
            raise _Bad(f"{where}[{i}]", f"unsupported content: a {kind} part (tuneforge trains on text only)")
        text = part.get("text", part.get("value"))
        if not isinstance(text, str):
            raise _Bad(f"{where}[{i}]", f"wrong type: {where}[{i}] has no text")
        texts.append(text)
    return "".join(texts)


def _weight(v: Any, where: str) -> float | None:
    if _missing(v):
        return None
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    elif isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise _Bad(where, f"wrong type: {where} must be a number, not {_type(v)}")


def _tool_calls(v: Any, where: str) -> list[dict[str, Any]] | None:
    """Tool calls in OpenAI's shape; also accepts bare {"name", "arguments"} calls (ShareGPT function_call)."""
    v = _json_value(v, where)
    if _missing(v) or v == []:
        return None
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list):
        raise _Bad(where, f"wrong type: {where} must be a list of calls, not {_type(v)}")
    calls = []
    for i, call in enumerate(v):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _Bad(f"{where}[{i}]", f"wrong type: {where}[{i}] must be a call with a name and arguments")
        args = fn.get("arguments", fn.get("parameters", {}))
        if not isinstance(args, str):  # OpenAI sends arguments as a JSON string
            args = json.dumps(args, ensure_ascii=False)
        out: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            out["id"] = call["id"]
        calls.append(out)
    return calls


def _tools(v: Any) -> list[dict[str, Any]] | None:
    v = _json_value(v, "tools")
    if _missing(v) or v in ([], "", {}):
        return None
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        raise _Bad("tools", f"wrong type: tools must be a list of function specs, not {_type(v)}")
    # Bare specs {"name", "description", "parameters"} (Glaive, LLaMA-Factory) get OpenAI's wrapper.
    return [
        t
        if "function" in t or t.get("type") not in (None, "function")
        else {"type": "function", "function": t}
        for t in v
    ]


def _message(d: Any, where: str) -> Message:
    if isinstance(d, str):
        raise _Bad(where, f"wrong type: {where} must be a message object with a role, not text")
    if not isinstance(d, dict):
        raise _Bad(where, f"wrong type: {where} must be a message object, not {_type(d)}")
    role_key = "role" if "role" in d else "from"
    role = d.get(role_key)
    if _missing(role):
        raise _Bad(f"{where}.role", f"missing field: {where} has no role")
    if not isinstance(role, str):
        raise _Bad(f"{where}.{role_key}", f"wrong type: {where}.{role_key} must be text, not {_type(role)}")
    content_key = "content" if "content" in d or "value" not in d else "value"
    raw_role = role.strip().lower()
    weight = _weight(d.get("weight", d.get("loss_weight")), f"{where}.weight")
    if raw_role == "function_call":  # ShareGPT: the assistant calls a tool; the value is {"name","arguments"}
        calls = _tool_calls(d.get(content_key), f"{where}.{content_key}")
        if not calls:
            raise _Bad(f"{where}.{content_key}", f"missing field: {where} is a function call without a call")
        return Message("assistant", "", weight=weight, tool_calls=calls)
    calls = _tool_calls(d.get("tool_calls"), f"{where}.tool_calls")
    if calls is None and isinstance(d.get("function_call"), dict):  # OpenAI's legacy single function call
        calls = _tool_calls(d["function_call"], f"{where}.function_call")
    name, call_id = d.get("name"), d.get("tool_call_id")
    return Message(
        ROLE_ALIASES.get(raw_role, role),  # unknown roles are kept so that validation can name them
        _content(d.get(content_key), f"{where}.{content_key}"),
        weight=weight,
        tool_calls=calls,
        name=name if isinstance(name, str) else None,
        tool_call_id=call_id if isinstance(call_id, str) else None,
    )


def _messages(v: Any, where: str) -> list[Message]:
    v = _json_value(v, where)
    if _missing(v):
        raise _Bad(where, f"missing field: {where}")
    if not isinstance(v, list):
        raise _Bad(where, f"wrong type: {where} must be a list of messages, not {_type(v)}")
    msgs = [_message(d, f"{where}[{i}]") for i, d in enumerate(v)]
    _name_tool_results(msgs)
    return msgs


def _name_tool_results(msgs: list[Message]) -> None:
    # ShareGPT observations do not say which tool answered; it is the one just called, which templates want.
    last_call: str | None = None
    for m in msgs:
        if m.tool_calls:
            last_call = m.tool_calls[-1]["function"]["name"] if len(m.tool_calls) == 1 else None
        elif m.role == "tool" and m.name is None and last_call:
            m.name = last_call


def _reply(v: Any, where: str) -> list[Message]:
    """A preference answer: text, one message ({"from": "gpt", "value"}), or a list of messages."""
    v = _turns_in_text(v)
    if _missing(v):
        raise _Bad(where, f"missing field: {where}")
    if isinstance(v, str):
        return [Message("assistant", v)]
    if isinstance(v, dict):
        return [_message(v, where)]
    return _messages(v, where)


def _prompt(v: Any, where: str) -> list[Message]:
    """A prompt: text (one user turn) or a list of messages."""
    v = _turns_in_text(v)
    if isinstance(v, list):
        return _messages(v, where)
    if _missing(v):
        raise _Bad(where, f"missing field: {where}")
    return [Message("user", _to_text(v, where))]


def _system(row: dict[str, Any], meta: dict[str, Any]) -> list[Message]:
    if "system" not in row:
        return []
    v = row["system"]
    if _missing(v):
        meta.setdefault("missing", []).append("system")
        return []
    text = _to_text(v, "system")
    return [Message("system", text)] if text.strip() else []


def _with_system(system: list[Message], msgs: list[Message]) -> list[Message]:
    if system and not any(m.role == "system" for m in msgs):
        return system + msgs
    return msgs


def _split_common_prefix(
    a: list[Message], b: list[Message], where: str
) -> tuple[list[Message], list[Message], list[Message]]:
    """Two full conversations → (shared prompt, chosen tail, rejected tail)."""
    n = 0
    while n < min(len(a), len(b)) and (a[n].role, a[n].content) == (b[n].role, b[n].content):
        n += 1
    if n == len(a) or n == len(b):
        raise _Bad(where, "no differing reply: chosen and rejected do not differ after their shared turns")
    return a[:n], a[n:], b[n:]


def _add_system_prompt(ex: Example, prompt: str) -> None:
    if ex.messages and not any(m.role == "system" for m in ex.messages):
        ex.messages.insert(0, Message("system", prompt))


# --------------------------------------------------------------------------------------- normalisers
def _chat(row: dict[str, Any]) -> Example:
    meta: dict[str, Any] = {}
    msgs = _messages(row.get("messages"), "messages")
    return Example("chat", _with_system(_system(row, meta), msgs), tools=_tools(row.get("tools")), meta=meta)


def _sharegpt(row: dict[str, Any]) -> Example:
    meta: dict[str, Any] = {}
    msgs = _messages(row.get("conversations"), "conversations")
    return Example("chat", _with_system(_system(row, meta), msgs), tools=_tools(row.get("tools")), meta=meta)


def _alpaca_turns(row: dict[str, Any], meta: dict[str, Any]) -> list[Message]:
    instruction = _string(row, "instruction")
    inp = row.get("input")
    if _missing(inp):
        # Present but empty (null, an empty CSV cell) is a missing value for data.clean.missing.
        if "input" in row:
            meta.setdefault("missing", []).append("input")
        inp = ""
    inp = _to_text(inp, "input")
    history = _json_value(row.get("history"), "history")
    turns = _system(row, meta)
    if not _missing(history) and history != "":
        if not isinstance(history, list):
            raise _Bad(
                "history",
                f"wrong type: history must be a list of [user, assistant] pairs, not {_type(history)}",
            )
        for i, pair in enumerate(history):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise _Bad(f"history[{i}]", f"wrong type: history[{i}] must be a [user, assistant] pair")
            turns += [
                Message("user", _to_text(pair[0], f"history[{i}][0]")),
                Message("assistant", _to_text(pair[1], f"history[{i}][1]")),
            ]
    # Instruction and input joined by a newline, as LLaMA-Factory does, so results compare with it.
    turns.append(Message("user", f"{instruction}\n{inp}" if inp.strip() else instruction))
    return turns


def _alpaca(row: dict[str, Any]) -> Example:
    meta: dict[str, Any] = {}
    turns = _alpaca_turns(row, meta)
    turns.append(Message("assistant", _string(row, "output")))
    return Example("chat", turns, meta=meta)


def _prompt_completion(row: dict[str, Any]) -> Example:
    meta: dict[str, Any] = {}
    prompt = _prompt(row.get("prompt"), "prompt")
    completion = _reply(row.get("completion"), "completion")
    return Example("chat", _with_system(_system(row, meta), prompt + completion), meta=meta)


def _text(row: dict[str, Any]) -> Example:
    return Example("text", text=_string(row, "text"))


def _classification(row: dict[str, Any]) -> Example:
    text = _string(row, "text")
    if _missing(row.get("label")) or row.get("label") == "":
        raise _Bad("label", "missing field: label")
    return Example("classification", text=text, label=_label(row["label"]))


def _pair(
    prompt: list[Message],
    chosen: list[Message],
    rejected: list[Message],
    row: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Example:
    meta = meta if meta is not None else {}
    prompt = _with_system(_system(row, meta), prompt)
    return Example(
        "preference", prompt, chosen=chosen, rejected=rejected, tools=_tools(row.get("tools")), meta=meta
    )


def _openai_dpo(row: dict[str, Any]) -> Example:
    inp = _json_value(row.get("input"), "input")
    if not isinstance(inp, dict):
        raise _Bad("input", f"wrong type: input must be an object with messages, not {_type(inp)}")
    ex = _pair(
        _messages(inp.get("messages"), "input.messages"),
        _reply(row.get("preferred_output"), "preferred_output"),
        _reply(row.get("non_preferred_output"), "non_preferred_output"),
        row,
    )
    ex.tools = _tools(inp.get("tools", row.get("tools")))
    return ex


def _chosen_messages(row: dict[str, Any]) -> Example:
    chosen = _messages(row.get("chosen_messages"), "chosen_messages")
    rejected = _messages(row.get("rejected_messages"), "rejected_messages")
    return _pair(*_split_common_prefix(chosen, rejected, "chosen_messages"), row)


def _conversations_pair(row: dict[str, Any]) -> Example:
    prompt = _messages(row.get("conversations"), "conversations")
    return _pair(prompt, _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected"), row)


def _messages_pair(row: dict[str, Any]) -> Example:
    prompt = _messages(row.get("messages"), "messages")
    return _pair(prompt, _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected"), row)


def _alpaca_pair(row: dict[str, Any]) -> Example:
    meta: dict[str, Any] = {}
    prompt = _alpaca_turns(row, meta)  # adds the system turn itself
    chosen, rejected = _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected")
    return Example("preference", prompt, chosen=chosen, rejected=rejected, meta=meta)


def _prompt_pair(row: dict[str, Any]) -> Example:
    prompt = _prompt(row.get("prompt"), "prompt")
    return _pair(prompt, _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected"), row)


def _implicit_pair(row: dict[str, Any]) -> Example:
    # TRL's "implicit prompt" data: chosen and rejected are whole conversations sharing the prompt.
    chosen, rejected = _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected")
    if len(chosen) > 1 or len(rejected) > 1:
        return _pair(*_split_common_prefix(chosen, rejected, "chosen"), row)
    return _pair([], chosen, rejected, row)


def _desirable(row: dict[str, Any]) -> bool:
    v = row.get("label")
    if _missing(v):
        raise _Bad("label", "missing field: label (true or false) for unpaired preference data")
    b = _parse_bool(v)
    if b is None:
        raise _Bad(
            "label", f"wrong type: label must be true or false for unpaired preference data, not {v!r}"
        )
    return b


def _kto(key: str) -> Callable[[dict[str, Any]], Example]:
    def normalise(row: dict[str, Any]) -> Example:
        meta: dict[str, Any] = {}
        msgs = _with_system(_system(row, meta), _messages(row.get(key), key))
        return Example(
            "preference", msgs, desirable=_desirable(row), tools=_tools(row.get("tools")), meta=meta
        )

    return normalise


def _kto_prompt(row: dict[str, Any]) -> Example:
    meta: dict[str, Any] = {}
    msgs = _prompt(row.get("prompt"), "prompt") + _reply(row.get("completion"), "completion")
    return Example("preference", _with_system(_system(row, meta), msgs), desirable=_desirable(row), meta=meta)


NORMALISERS: dict[str, Callable[[dict[str, Any]], Example]] = {
    "openai_dpo": _openai_dpo,
    "chosen_messages": _chosen_messages,
    "conversations_pair": _conversations_pair,
    "messages_pair": _messages_pair,
    "alpaca_pair": _alpaca_pair,
    "prompt_pair": _prompt_pair,
    "implicit_pair": _implicit_pair,
    "kto_messages": _kto("messages"),
    "kto_conversations": _kto("conversations"),
    "kto_prompt": _kto_prompt,
    "sharegpt": _sharegpt,
    "chat": _chat,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "classification": _classification,
    "text": _text,
}
