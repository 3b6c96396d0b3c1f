"""File readers: a data file → raw records (dicts), each with the `Source` it came from.

One reader per file type, chosen by extension. Readers know nothing of record formats (that is formats.py);
they only turn bytes into dicts. A record that cannot be read (a JSON Lines line that is not JSON, a CSV row
with too many cells) becomes a `Reject` in its place, so that nothing is lost without a reason; a file that
cannot be read at all raises a one-line `DataError`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.data.schema import Reject, Source
from tuneforge.errors import DataError

Row = tuple[Source, dict[str, Any] | Reject]

SUPPORTED = "use JSONL, JSON, CSV, Parquet or XML"
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xml": "xml",
}

# Element names whose children always form a list in XML, even when there is only one child.
XML_LIST_FIELDS = {
    "messages",
    "conversations",
    "history",
    "tools",
    "tool_calls",
    "chosen_messages",
    "rejected_messages",
    "preferred_output",
    "non_preferred_output",
    "parts",
}
# Child element names that mark their parent as a list (<chosen><message .../></chosen>).
XML_ITEM_TAGS = {"message", "turn", "conversation", "item", "tool", "tool_call", "part", "pair"}


def read_rows(path: str | Path) -> list[Row]:
    """Read every record of a data file, in file order. Raises DataError if the file cannot be used at all."""
    p = Path(path)
    kind = file_kind(p)
    rows = _READERS[kind](p)
    if not rows:
        raise DataError(f"{p} holds no records", "add records to it, or point the config at the right file")
    return rows


def file_kind(p: Path) -> str:
    """The reader for a path ("jsonl", "json", ...), after checking the file exists and is not empty."""
    if not p.exists():
        raise DataError(
            f"data file {p} does not exist", "check the path (relative paths start in the current folder)"
        )
    if p.is_dir():
        raise DataError(f"{p} is a folder, not a data file", f"point to one file inside it ({SUPPORTED})")
    ext = p.suffix.lower()
    if ext not in EXTENSIONS:
        shown = ext or "(no extension)"
        raise DataError(
            f"{p}: unknown format {shown}", f"{SUPPORTED} (name the file .jsonl, .json, .csv, ...)"
        )
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty", "add records to it, or point the config at the right file")
    return EXTENSIONS[ext]


def _read_text(p: Path) -> str:
    try:
        text = p.read_bytes().decode("utf-8-sig")  # -sig: files saved by Excel start with a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(
            f"{p} is not UTF-8 text (bad byte at offset {e.start})", "re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{p} is empty", "add records to it, or point the config at the right file")
    return text


# ------------------------------------------------------------------------------------------------- JSON
def _read_jsonl(p: Path) -> list[Row]:
    text = _read_text(p)
    rows = _jsonl_rows(p, text)
    if rows and all(isinstance(r, Reject) for _, r in rows):
        # A pretty-printed JSON document saved as .jsonl: read it as JSON rather than reject every line.
        try:
            return _json_document_rows(p, json.loads(text))
        except json.JSONDecodeError:
            first = rows[0][1]
            raise DataError(
                f"{p}: none of its {len(rows)} lines is a JSON object (line {rows[0][0].line}: {first.reason})",
                "JSON Lines needs one JSON object per line",
            ) from None
    return rows


def _jsonl_rows(p: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    # split on "\n" only: str.splitlines() would also split on U+2028, which JSON strings may hold raw.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        src = Source(str(p), len(rows), lineno)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(
                (src, Reject("read", f"not valid JSON: {e.msg} at column {e.colno}", src, record=line))
            )
            continue
        rows.append((src, _as_record(value, src)))
    return rows


def _as_record(value: Any, src: Source) -> dict[str, Any] | Reject:
    if isinstance(value, dict):
        return value
    kind = "a list" if isinstance(value, list) else f"a {type(value).__name__}"
    return Reject("read", f"not a JSON object: the record is {kind}", src, record=value)


def _read_json(p: Path) -> list[Row]:
    text = _read_text(p)
    located = _array_with_lines(text)
    if located is not None:  # the common case: a top-level array; we also know each record's line
        return _value_rows(p, located)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if _looks_like_jsonl(text):  # a .json file that is really JSON Lines
            return _jsonl_rows(p, text)
        raise DataError(
            f"{p} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
            "fix the syntax, or write one JSON object per line as JSON Lines (.jsonl)",
        ) from None
    return _json_document_rows(p, doc)


def _looks_like_jsonl(text: str) -> bool:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def _json_document_rows(p: Path, doc: Any) -> list[Row]:
    return _value_rows(p, [(None, v) for v in _find_records(p, doc)])


def _value_rows(p: Path, located: list[tuple[int | None, Any]]) -> list[Row]:
    rows: list[Row] = []
    for i, (line, value) in enumerate(located):
        src = Source(str(p), i, line)
        rows.append((src, _as_record(value, src)))
    return rows


def _find_records(p: Path, doc: Any) -> list[Any]:
    """The list of records in a JSON document: the document itself, or the one list of objects it holds."""
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, dict):
        raise DataError(
            f"{p} holds a single JSON {type(doc).__name__}, not records", "write a JSON array of objects"
        )
    from tuneforge.data.formats import KNOWN_FIELDS  # late import: formats imports this module

    if KNOWN_FIELDS & doc.keys():  # one record on its own, e.g. {"messages": [...]}
        return [doc]
    lists = [k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if len(lists) == 1:  # {"data": [...]}, {"examples": [...]}, ...
        return doc[lists[0]]
    if len(lists) > 1:
        raise DataError(
            f"{p} holds several lists of records ({', '.join(lists)})",
            "put one list in each file (for example train and validation files)",
        )
    raise DataError(
        f"{p} holds a JSON object with no list of records (keys: {', '.join(map(str, doc)) or 'none'})",
        'write a top-level array of objects, or an object with one list such as {"data": [...]}',
    )


_WS = re.compile(r"[ \t\n\r]*")


def _array_with_lines(text: str) -> list[tuple[int, Any]] | None:
    """Parse a top-level JSON array element by element, noting the line each element starts on.

    Returns None when the text is not exactly one array, so that the caller falls back to json.loads
    (which gives the precise syntax error) or to JSON Lines.
    """
    decoder = json.JSONDecoder()
    i = _WS.match(text, 0).end()
    if text[i : i + 1] != "[":
        return None
    i = _WS.match(text, i + 1).end()
    out: list[tuple[int, Any]] = []
    line, counted = 1, 0
    if text[i : i + 1] == "]":
        return [] if _WS.match(text, i + 1).end() == len(text) else None
    while True:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        line += text.count("\n", counted, i)
        counted = i
        out.append((line, value))
        i = _WS.match(text, end).end()
        sep = text[i : i + 1]
        if sep == "]":
            break
        if sep != ",":
            return None
        i = _WS.match(text, i + 1).end()
    return out if _WS.match(text, i + 1).end() == len(text) else None


# -------------------------------------------------------------------------------------------------- CSV
def _read_csv(p: Path) -> list[Row]:
    text = _read_text(p)
    delimiter = "\t" if p.suffix.lower() == ".tsv" else _sniff_delimiter(text)
    # Long documents (pre-training text) exceed csv's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[Row] = []
    last_line = 0
    try:
        for cells in reader:
            start, last_line = last_line + 1, reader.line_num  # a quoted cell may span several lines
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = _csv_header(p, cells)
                continue
            src = Source(str(p), len(rows), start)
            rows.append((src, _csv_record(header, cells, src)))
    except csv.Error as e:
        raise DataError(
            f"{p} is not valid CSV at line {reader.line_num}: {e}", "fix the quoting on that line"
        ) from None
    if header is not None and not rows:
        raise DataError(f"{p} holds no records (only a header row)", "add rows below the header")
    return rows


def _sniff_delimiter(text: str) -> str:
    # The header line rarely holds quoted text, so the most frequent candidate in it is the delimiter.
    header = text.split("\n", 1)[0]
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _csv_header(p: Path, cells: list[str]) -> list[str]:
    header = [c.strip() for c in cells]
    seen: set[str] = set()
    for i, name in enumerate(header):
        if not name:
            raise DataError(
                f"{p}: column {i + 1} of the header row has no name", "name every column in the first row"
            )
        if name in seen:
            raise DataError(f"{p}: the header names column {name!r} twice", "give every column its own name")
        seen.add(name)
    return header


def _csv_record(header: list[str], cells: list[str], src: Source) -> dict[str, Any] | Reject:
    if len(cells) > len(header):
        reason = f"wrong number of cells: the row has {len(cells)}, the header {len(header)} (an unquoted delimiter?)"
        return Reject("read", reason, src, record=cells)
    cells = cells + [""] * (len(header) - len(cells))
    # An empty cell is a missing value, not an empty string: CSV cannot tell them apart.
    return {name: (cell if cell != "" else None) for name, cell in zip(header, cells, strict=True)}


# ---------------------------------------------------------------------------------------------- Parquet
def _read_parquet(p: Path) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(p).to_pylist()
    except (pa.ArrowException, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"{p} is not a readable Parquet file: {first}", "re-export it, or use JSONL or CSV"
        ) from None
    return [(Source(str(p), i), r) for i, r in enumerate(records)]


# -------------------------------------------------------------------------------------------------- XML
def _read_xml(p: Path) -> list[Row]:
    from lxml import etree

    # No entity expansion and no network: a data file must not be able to read other files or fetch URLs.
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=True, remove_comments=True, remove_pis=True
    )
    try:
        root = etree.parse(str(p), parser).getroot()
    except etree.XMLSyntaxError as e:
        raise DataError(
            f"{p} is not valid XML: {str(e).splitlines()[0]}", "fix the XML syntax at that line"
        ) from None
    children = [c for c in root if isinstance(c.tag, str)]
    return [(Source(str(p), i, c.sourceline), _xml_record(c)) for i, c in enumerate(children)]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop a namespace: {http://...}message → message


def _xml_record(el: Any) -> dict[str, Any]:
    value = _xml_value(el)
    if isinstance(value, dict):
        return value
    return {_local(el.tag): value}  # <record>text</record>: a record with one field named after the tag


def _xml_value(el: Any) -> Any:
    """An element as data: text for a leaf, a list for repeated children, else a dict of its fields.

    Attributes are fields too, so `<message role="user">Hi</message>` is {"role": "user", "content": "Hi"}
    and `<turn from="human">Hi</turn>` is {"from": "human", "value": "Hi"} (ShareGPT's names).
    """
    children = [c for c in el if isinstance(c.tag, str)]
    attrs = {_local(k): v for k, v in el.attrib.items()}
    if not children:
        text = el.text or ""
        if not attrs:
            return text
        if text.strip():
            attrs["value" if "from" in attrs else "content"] = text
        return attrs
    tags = [_local(c.tag) for c in children]
    is_list = _local(el.tag) in XML_LIST_FIELDS or (
        len(set(tags)) == 1 and (len(tags) > 1 or tags[0] in XML_ITEM_TAGS)
    )
    if is_list and not attrs:
        return [_xml_value(c) for c in children]
    out: dict[str, Any] = dict(attrs)
    for tag, child in zip(tags, children, strict=True):
        if tags.count(tag) > 1:  # a repeated field name collects its values in a list
            out.setdefault(tag, []).append(_xml_value(child))
        else:
            out[tag] = _xml_value(child)
    return out


_READERS: dict[str, Callable[[Path], list[Row]]] = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "xml": _read_xml,
}
