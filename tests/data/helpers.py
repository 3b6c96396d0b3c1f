"""Writers for test fixtures: the same records as a JSONL, JSON, CSV, Parquet or XML file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from lxml import etree

FILE_TYPES = ("jsonl", "json", "csv", "parquet", "xml")


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict[str, Any]]) -> Path:
    fields = list(dict.fromkeys(k for r in records for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in records:
            w.writerow([_cell(r.get(k)) for k in fields])
    return path


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        return json.dumps(v, ensure_ascii=False)  # nested data travels as JSON text in a CSV cell
    return str(v)


def write_parquet(path: Path, records: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_xml(path: Path, records: list[dict[str, Any]]) -> Path:
    root = etree.Element("dataset")
    for r in records:
        rec = etree.SubElement(root, "record")
        for key, value in r.items():
            _xml_field(rec, key, value)
    path.write_bytes(etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="utf-8"))
    return path


def _xml_field(parent: Any, key: str, value: Any) -> None:
    el = etree.SubElement(parent, key)
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        for item in value:  # a list of turns: scalars as attributes, the text as the element's text
            turn = etree.SubElement(el, "turn" if "from" in item else "message")
            for k, v in item.items():
                if k in ("content", "value"):
                    turn.text = v
                else:
                    turn.set(k, _cell(v))
    elif isinstance(value, list | dict):
        el.text = json.dumps(value, ensure_ascii=False)
    else:
        el.text = _cell(value)


WRITERS = {
    "jsonl": write_jsonl,
    "json": write_json,
    "csv": write_csv,
    "parquet": write_parquet,
    "xml": write_xml,
}


def write(path: Path, records: list[Any]) -> Path:
    """Write records in the file type named by the path's extension."""
    ext = path.suffix.lstrip(".")
    return WRITERS[ext](path, records)
