"""OpenAI's reinforcement fine-tuning graders as tuneforge's GRPO rewards, and its training rows as ours.

A `{"type": "reinforcement"}` job names a grader; tuneforge trains it as objective grpo with the built-in rewards
that compute the same score (train/rewards.py). What maps:

    string_check, operation eq, reference {{item.FIELD}}   exact_match against FIELD (whitespace-normalised)
    string_check, operation eq, a literal reference        regex ^\\s*LITERAL\\s*$
    multi, calculate_output a weighted sum of its graders  each grader, weighted (e.g. "0.75 * queue + 0.25 * json")
    tuneforge's own: json_valid, exact_match, field_match (fields), regex (pattern), length_penalty

Refused with the reason: python graders (the server would run the caller's code), score_model and label_model (a
judge model), text_similarity and string_check ne / like / ilike (no built-in reward scores them alike). In the
library, a `module:function` reward does any of these.

OpenAI's rows are `{"messages": [...ending with the user's turn], "FIELD": reference, ...}`: the reference moves
into a final assistant turn, where every reward reads it (`example.answer()`); a row whose messages already end
with the answer needs no field.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE = "{{sample.output_text}}"
_ITEM = re.compile(r"^\{\{\s*item\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")
# tuneforge's grader types: the built-in rewards by name, with the argument each takes
OWN = {
    "json_valid": None,
    "exact_match": None,
    "length_penalty": None,
    "field_match": "fields",
    "regex": "pattern",
}
REFUSED = {
    "python": "a python grader runs the caller's code on the server; put the function in a module the server "
    "can import and use it from a library config (rewards: [module:function])",
    "score_model": "a score_model grader needs a judge model, which tuneforge does not run",
    "label_model": "a label_model grader needs a judge model, which tuneforge does not run",
    "text_similarity": "no built-in reward scores text similarity; use string_check (eq) or a library config "
    "with a module:function reward",
    "endpoint": "an endpoint grader calls out to another service, which tuneforge does not do",
}


class GraderError(ValueError):
    """A grader tuneforge cannot train with; the message says why and what to send instead."""


@dataclass
class Graded:
    """A grader as GRPO rewards (config.RewardConfig short forms) and the item field holding the reference."""

    rewards: list[dict[str, Any]] = field(default_factory=list)
    reference_field: str | None = None


def rewards_from_grader(grader: Any) -> Graded:
    if not isinstance(grader, dict):
        raise GraderError("grader must be an object with a type (string_check, multi, field_match ...)")
    out = Graded()
    if grader.get("type") == "multi":
        parts = grader.get("graders")
        if not isinstance(parts, dict) or not parts:
            raise GraderError("a multi grader needs graders: {name: grader, ...}")
        weights = _weights(grader.get("calculate_output"), list(parts))
        for name, sub in parts.items():
            if isinstance(sub, dict) and sub.get("type") == "multi":
                raise GraderError(f"grader {name!r}: a multi grader inside a multi grader is not supported")
            if weights.get(name, 0.0) == 0.0:
                continue
            _one(sub, weights[name], out, f"graders.{name}")
    else:
        _one(grader, 1.0, out, "grader")
    if not out.rewards:
        raise GraderError("the grader gives every answer the same score: nothing to learn from")
    for r in out.rewards:  # what training would refuse, refused now: at job creation, not in the worker
        _buildable(r)
    return out


def _buildable(reward: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from tuneforge.config import RewardConfig

    if not math.isfinite(reward["weight"]):
        raise GraderError(f"calculate_output gives {reward['kind']} the weight {reward['weight']}")
    try:
        RewardConfig.model_validate(reward)
    except ValidationError as e:
        raise GraderError(f"{reward['kind']}: {e.errors()[0]['msg']}") from None
    if reward["kind"] == "regex":
        if not isinstance(reward["arg"], str):
            raise GraderError(f"a regex grader's pattern must be a string, got {reward['arg']!r}")
        try:
            re.compile(reward["arg"])
        except re.error as e:
            raise GraderError(f"regex pattern {reward['arg']!r} does not compile: {e}") from None


def _one(g: Any, weight: float, out: Graded, where: str) -> None:
    if not isinstance(g, dict) or not isinstance(g.get("type"), str):
        raise GraderError(f"{where}: a grader is an object with a type")
    kind = g["type"]
    if kind in REFUSED:
        raise GraderError(f"{where}: {REFUSED[kind]}")
    if "input" in g and g["input"] != SAMPLE:
        raise GraderError(f"{where}: input must be {SAMPLE!r} (the sampled answer), got {g['input']!r}")
    if kind == "string_check":
        if g.get("operation", "eq") != "eq":
            raise GraderError(
                f"{where}: string_check operation {g.get('operation')!r} has no built-in reward; use eq"
            )
        ref = g.get("reference")
        if not isinstance(ref, str) or not ref:
            raise GraderError(f"{where}: string_check needs a reference ({{{{item.FIELD}}}} or a string)")
        if "{{" in ref:  # a template: an item field, checked as such
            _reference(ref, out, where)
            out.rewards.append({"kind": "exact_match", "weight": weight})
        else:
            out.rewards.append({"kind": "regex", "arg": rf"^\s*{re.escape(ref)}\s*$", "weight": weight})
        return
    if kind not in OWN:
        known = ", ".join(["string_check", "multi", *OWN])
        raise GraderError(f"{where}: unknown grader type {kind!r}; tuneforge maps {known}")
    arg_name = OWN[kind]
    arg = g.get(arg_name) if arg_name else None
    if arg_name and arg in (None, "", []):
        raise GraderError(f"{where}: a {kind} grader needs {arg_name}")
    if kind == "field_match" and (not isinstance(arg, list) or not all(isinstance(f, str) for f in arg)):
        raise GraderError(f"{where}: field_match fields must be a list of field names")
    if kind in ("exact_match", "field_match", "length_penalty"):
        _reference(g.get("reference", "{{item.reference_answer}}"), out, where, given="reference" in g)
    out.rewards.append({"kind": kind, "arg": arg, "weight": weight})


def _reference(ref: Any, out: Graded, where: str, given: bool = True) -> None:
    """Every grader that compares with a reference must read the same item field: it becomes the answer turn."""
    m = _ITEM.match(ref) if isinstance(ref, str) else None
    if m is None:
        raise GraderError(f"{where}: reference must be {{{{item.FIELD}}}}, got {ref!r}")
    name = m.group(1)
    if not given and out.reference_field is not None:
        return  # no reference named: the one another grader named
    if out.reference_field not in (None, name):
        raise GraderError(
            f"{where}: graders compare with different item fields ({out.reference_field!r} and {name!r}); "
            "tuneforge trains on one reference per row"
        )
    out.reference_field = name


def _weights(expr: Any, names: list[str]) -> dict[str, float]:
    """calculate_output as weights: a sum of terms `w * name`, `name * w`, `name / d` or `name` (nothing else:
    min, max and products of graders are not a weighted sum)."""
    if not isinstance(expr, str) or not expr.strip():
        raise GraderError('a multi grader needs calculate_output, e.g. "0.5 * a + 0.5 * b"')
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError as e:
        raise GraderError(f"calculate_output {expr!r} is not an expression: {e.msg}") from e
    out: dict[str, float] = {}

    def term(node: ast.AST, sign: float) -> None:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            term(node.left, sign)
            term(node.right, sign if isinstance(node.op, ast.Add) else -sign)
            return
        w, name = _scaled(node)
        if name not in names:
            raise GraderError(f"calculate_output names {name!r}, which is not one of the graders {names}")
        out[name] = out.get(name, 0.0) + sign * w

    def _scaled(node: ast.AST) -> tuple[float, str]:
        if isinstance(node, ast.Name):
            return 1.0, node.id
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Div):
            left, right = node.left, node.right
            if (
                isinstance(node.op, ast.Mult)
                and isinstance(left, ast.Constant)
                and isinstance(right, ast.Name)
            ):
                left, right = right, left
            if isinstance(left, ast.Name) and isinstance(right, ast.Constant) and _number(right.value):
                value = float(right.value)
                if isinstance(node.op, ast.Div):
                    if value == 0:
                        raise GraderError(f"calculate_output {expr!r} divides by zero")
                    value = 1 / value
                return value, left.id
        raise GraderError(
            f"calculate_output {expr!r} is not a weighted sum of the graders (terms like 0.5 * name)"
        )

    term(tree, 1.0)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------- rows
def prepare_rows(src: Path, reference_field: str | None, dst: Path) -> tuple[int, list[int]]:
    """OpenAI's reinforcement rows as tuneforge chat rows in `dst`, line for line (so that the file's checks
    quote the user's line numbers): the reference field's value becomes a final assistant turn (JSON text when
    it is not a string). Lines that are not such rows pass unchanged, for the checks to report. Returns how many
    rows were given their answer from the field, and the line numbers of rows with neither the field nor an
    answer turn (nothing to grade against)."""
    moved, unanswered = 0, []
    lines = []
    for number, line in enumerate(src.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        row = _json(line)
        msgs = row.get("messages") if isinstance(row, dict) else None
        if isinstance(msgs, list):
            ends_with_answer = (
                bool(msgs) and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant"
            )
            if not ends_with_answer and (not reference_field or reference_field not in row):
                unanswered.append(number)
            elif not ends_with_answer:
                value = row.pop(reference_field)
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                row["messages"] = [*msgs, {"role": "assistant", "content": text}]
                line = json.dumps(row, ensure_ascii=False)
                moved += 1
        lines.append(line)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return moved, unanswered


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
