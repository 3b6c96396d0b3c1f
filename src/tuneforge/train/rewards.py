"""Reward functions for objective grpo: built-ins for answers a program can check, and the user's own.

Every reward takes (prompt, completion, example) — the prompt's text, the sampled answer's text and the training
record (`example.answer()` is its reference answer) — and returns a number; the total is their weighted sum.

    json_valid          1 if the answer is a JSON value as a whole (no prose around it), else 0
    json_schema: FILE   1 if it is JSON that the schema in FILE accepts, else 0
    exact_match         1 if the answer equals the reference (whitespace-normalised), else 0
    field_match: [F..]  the share of fields F whose values equal the reference JSON's (0 unless the answer is JSON)
    regex: PATTERN      1 if the pattern matches anywhere in the answer, else 0
    length_penalty      -|len(answer) - len(reference)| / len(reference) in characters, at least -1
    module:function     your own: `def reward(prompt, completion, example) -> float`

A function that raises, or returns something that is not a finite number, stops training with its name and the
answer it failed on (RewardError), not a traceback from inside the loop.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import RewardConfig
from tuneforge.errors import ConfigError, TuneforgeError

RewardFn = Callable[[str, str, Any], float]


class RewardError(TuneforgeError):
    """A reward function failed on an answer."""


def _norm(s: str) -> str:
    return " ".join((s or "").split())


def _json(s: str) -> Any:
    try:
        return json.loads((s or "").strip())
    except json.JSONDecodeError:
        return _INVALID


_INVALID = object()


def json_valid(prompt: str, completion: str, example: Any) -> float:
    return float(_json(completion) is not _INVALID)


def exact_match(prompt: str, completion: str, example: Any) -> float:
    return float(_norm(completion) == _norm(example.answer()))


def field_match(fields: Sequence[str]) -> RewardFn:
    def reward(prompt: str, completion: str, example: Any) -> float:
        got, want = _json(completion), _json(example.answer())
        if not isinstance(got, dict):
            return 0.0
        if not isinstance(want, dict):
            raise ValueError(f"the reference answer is not a JSON object: {example.answer()[:80]!r}")
        return sum(f in got and got[f] == want.get(f) for f in fields) / len(fields)

    return reward


def json_schema(path: str) -> RewardFn:
    try:
        import jsonschema
    except ImportError as e:
        raise ConfigError("reward json_schema needs the jsonschema package", "pip install jsonschema") from e
    file = Path(path)
    try:
        schema = json.loads(file.read_text())
        validator = jsonschema.validators.validator_for(schema)(schema)
    except (OSError, json.JSONDecodeError, jsonschema.SchemaError) as e:
        raise ConfigError(
            f"reward json_schema: cannot use {file}: {e}", "give a readable JSON Schema file"
        ) from e

    def reward(prompt: str, completion: str, example: Any) -> float:
        value = _json(completion)
        return float(value is not _INVALID and validator.is_valid(value))

    return reward


def regex(pattern: str) -> RewardFn:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"reward regex {pattern!r} is not a valid pattern: {e}", "fix the pattern") from e
    return lambda prompt, completion, example: float(compiled.search(completion or "") is not None)


def length_penalty(prompt: str, completion: str, example: Any) -> float:
    ref = len(example.answer() or "")
    return -min(1.0, abs(len(completion or "") - ref) / max(ref, 1))


def user_function(spec: str) -> RewardFn:
    """`module:function`, importable from the working directory or PYTHONPATH."""
    module, _, name = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"reward {spec}: cannot import it ({e})",
            "give module:function of a module importable from the working directory (or on PYTHONPATH)",
        ) from e
    if not callable(fn):
        raise ConfigError(
            f"reward {spec} is not a function", "point it at def f(prompt, completion, example)"
        )
    return fn


@dataclass
class Reward:
    name: str
    fn: RewardFn
    weight: float


def build(specs: Sequence[RewardConfig]) -> list[Reward]:
    """The configured rewards as functions (a file or module that cannot be used fails here, before training)."""
    out = []
    for s in specs:
        if s.kind == "function":
            fn, name = user_function(s.arg), s.arg
        elif s.kind in ("field_match", "json_schema", "regex"):
            fn = {"field_match": field_match, "json_schema": json_schema, "regex": regex}[s.kind](s.arg)
            name = s.kind
        else:
            fn, name = (
                {"json_valid": json_valid, "exact_match": exact_match, "length_penalty": length_penalty}[
                    s.kind
                ],
                s.kind,
            )
        out.append(Reward(name, fn, s.weight))
    return out


def score(rewards: Sequence[Reward], prompt: str, completion: str, example: Any) -> tuple[float, list[float]]:
    """(weighted total, each reward's own value) of one answer."""
    parts = []
    for r in rewards:
        try:
            value = r.fn(prompt, completion, example)
        except Exception as e:
            raise RewardError(
                f"reward {r.name} raised {type(e).__name__}: {e} on the answer {completion[:200]!r}",
                "fix the function (it must return a number for any text the model may write)",
            ) from e
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RewardError(
                f"reward {r.name} returned {value!r} (not a finite number) on the answer {completion[:200]!r}",
                "return a float, e.g. 1.0 for a good answer and 0.0 otherwise",
            )
        parts.append(float(value))
    return sum(r.weight * v for r, v in zip(rewards, parts, strict=True)), parts
