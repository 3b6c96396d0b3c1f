"""A run config from a YAML file and `--set` overrides: each section validated by its schema (config.py), the
method's options by the method's own config class, then the rules that span sections (method x objective x data
x packing), and each stage of a staged run built the same way — so a bad config fails before any model is loaded,
with one line that names the key, the problem and the fix.

Stages (sequential fine-tuning: general → domain → task in one config) are expanded here too:

    stages:
      - {name: domain, data: {train: docs.jsonl, format: text, train_on: all}, train: {epochs: 1}}
      - {name: task, data: {train: tickets.jsonl}}

Each stage is a partial config laid over the run's own (what it does not say it inherits; a stage that names
another method or objective replaces that section instead of merging into it). Stage k trains into its own folder
of the run (rundir.py) and starts from stage k-1's result; recipes/stages.py runs them.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge.config import (
    DEFAULT_METHOD,
    MethodConfig,
    MethodSection,
    RunConfig,
    apply_overrides,
    method_section,
)
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.methods import registry
from tuneforge.rundir import RunDir

STAGE_KEYS = {"name", "data", "model", "method", "train", "objective", "forgetting", "eval", "seed"}
REPLACED = ("method", "objective")  # sections replaced, not merged, when a stage names another kind


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """The run config in a YAML file (or none: defaults only), with `--set key=value` overrides on top."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(
                f"config file {p} does not exist", "check the path, or start from examples/*.yaml"
            )
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}".splitlines()[0], "fix the YAML syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping of sections", "see examples/tickets-lora.yaml")
        source = str(p)
    return build_config(apply_overrides(data, overrides or []), source)


def build_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """A validated RunConfig from a mapping of sections; `source` names it in error messages."""
    errors: list[dict[str, Any]] = []
    cfg = method = None
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        errors += e.errors()
    try:
        method = method_config(data.get("method", {}))
    except ValidationError as e:
        errors += [{**err, "loc": ("method", *err["loc"])} for err in e.errors()]
    except ValueError as e:  # not a name or a mapping
        errors.append({"type": "value_error", "loc": ("method",), "msg": str(e)})
    except KeyError as e:  # an unknown method name, from the registry
        raise ConfigError(f"{source}: {e.args[0]}", "run `tuneforge methods` to list them") from None
    if errors:  # pydantic's order: the first field in the schema that failed
        order = list(RunConfig.model_fields)
        errors.sort(
            key=lambda err: order.index(err["loc"][0]) if err["loc"] and err["loc"][0] in order else -1
        )
        raise _explain(errors[0], source, data)
    cfg.method = method
    try:
        check(cfg)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}", "see `tuneforge train --help-config`") from None
    return cfg


def method_config(value: Any) -> MethodConfig:
    """The `method:` section validated by the method's own config class (methods/*.py)."""
    section = method_section(value)
    if type(section) not in (MethodConfig, MethodSection):
        return section  # already the method's own class
    raw = section.model_dump()
    return registry.get(raw["name"]).config_cls(**raw)


# --------------------------------------------------------------------------------------- cross-field rules
def check(cfg: RunConfig) -> None:
    """Combinations that cannot work, refused with what to use instead (ValueError)."""
    registry.get(cfg.method.name).check(cfg)
    check_objective(cfg)
    check_stages(cfg)
    if cfg.model.adapter and registry.get(cfg.method.name).artifact != "adapter":
        raise ValueError(
            f"model.adapter continues a trained adapter, and method {cfg.method.name} trains no adapter: use the "
            "adapter's method (lora), or train the full model without model.adapter"
        )


def check_objective(cfg: RunConfig) -> None:
    o, f = cfg.objective, cfg.forgetting
    adapters = registry.get(cfg.method.name).artifact == "adapter"
    if o.name in ("dpo", "orpo", "kto"):
        if cfg.data.format not in ("auto", "preference"):
            kto = o.name == "kto"
            what = "answers labelled desirable or not" if kto else "preference pairs"
            give = (
                "messages (or prompt/completion) with label true/false, or prompt/chosen/rejected pairs"
                if kto
                else "prompt/chosen/rejected"
            )
            raise ValueError(
                f"objective {o.name} learns from {what} but data.format is {cfg.data.format}: give records with "
                f"{give} (data.format: preference), or use objective sft"
            )
        if cfg.train.packing:
            raise ValueError(f"objective {o.name} compares whole answers: set train.packing to false")
        if f.replay > 0 or f.distill > 0:
            raise ValueError(
                f"forgetting.replay and forgetting.distill work with objective sft; with {o.name} use "
                "forgetting.ewc (dpo's and kto's beta already keeps the model near its reference)"
            )
        if o.name in ("dpo", "kto") and not adapters:
            other = (
                "objective orpo (no reference model)"
                if o.name == "dpo"
                else "objective sft on the desirable answers (no reference model)"
            )
            raise ValueError(
                f"objective {o.name} takes its reference from the base model with adapters off, and method "
                f"{cfg.method.name} has none: use method lora, or {other}"
            )
    if o.name == "grpo":
        if cfg.data.format in ("text", "preference", "classification"):
            raise ValueError(
                f"objective grpo samples answers to prompts but data.format is {cfg.data.format}: give chat or "
                "prompt/completion records (the completion is the reference the rewards compare with)"
            )
        if cfg.train.packing:
            raise ValueError("objective grpo samples whole answers: set train.packing to false")
        if f.replay > 0 or f.distill > 0 or f.ewc > 0:
            raise ValueError(
                "forgetting.replay, distill and ewc work with objective sft; grpo's beta keeps the model near "
                "its reference"
            )
        if o.beta > 0 and not adapters:
            raise ValueError(
                f"objective grpo's KL term takes its reference from the base model with adapters off, and method "
                f"{cfg.method.name} has none: use method lora, or set objective.beta: 0 (no reference)"
            )
    if f.distill > 0 and not adapters:
        raise ValueError(
            f"forgetting.distill compares with the base model (the same weights with adapters off), and method "
            f"{cfg.method.name} has no adapters: use method lora, or forgetting.replay / forgetting.ewc"
        )


def check_stages(cfg: RunConfig) -> None:
    for k, (name, d) in enumerate(stage_dicts(cfg)):
        try:
            build_config(d, f"stages[{k}] ({name})")
        except TuneforgeError as e:
            raise ValueError(e.problem + (f" ({e.fix})" if e.fix else "")) from None


# ------------------------------------------------------------------------------------------------- stages
def stage_configs(cfg: RunConfig) -> list[tuple[str, RunConfig]]:
    """(name, config) of every stage, in order."""
    return [(name, build_config(d, f"stage {name}")) for name, d in stage_dicts(cfg)]


def stage_dicts(cfg: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """(name, config mapping) of every stage, with its run folder and starting model filled in."""
    base = cfg.model_dump(mode="json", exclude_unset=True)
    base.pop("stages", None)
    base.setdefault("model", {})
    run = RunDir(cfg.run_dir)
    out: list[tuple[str, dict[str, Any]]] = []
    start: Path | None = None
    for k, st in enumerate(cfg.stages):
        if not isinstance(st, dict):
            raise ValueError(f"stages[{k}] must be a mapping such as {{name: task, data: {{train: file}}}}")
        unknown = set(st) - STAGE_KEYS
        if unknown:
            raise ValueError(
                f"stages[{k}] has unknown key(s) {', '.join(sorted(unknown))}; a stage may set: "
                f"{', '.join(sorted(STAGE_KEYS))}"
            )
        name = str(st.get("name") or f"stage{k + 1}")
        d = _merge(base, {key: v for key, v in st.items() if key != "name"})
        stage = run.stage(k, name)
        d["run_dir"] = str(stage.root)
        if start is not None:
            d.setdefault("model", {})["name"] = str(start)
        method = d.get("method") or DEFAULT_METHOD
        method_name = method if isinstance(method, str) else method.get("name", DEFAULT_METHOD)
        start = stage.next_stage_start(registry.get(method_name).artifact)
        out.append((name, d))
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k in REPLACED and isinstance(v, (str, dict)):
            new = v if isinstance(v, str) else v.get("name")
            old = out.get(k, {}).get("name") if isinstance(out.get(k), dict) else out.get(k)
            if new is not None and new != old:
                out[k] = copy.deepcopy(v)
                continue
            if isinstance(v, str):
                continue
        if k == "data" and isinstance(v, dict) and isinstance(out.get(k), dict):
            # A stage's own training data replaces the inherited one (a file, or a task mix).
            if "train" in v or "mix" in v:
                out[k] = {kk: vv for kk, vv in out[k].items() if kk not in ("train", "mix", "format")}
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ------------------------------------------------------------------------------------------------- errors
def _explain(first: dict[str, Any], source: str, data: dict[str, Any]) -> ConfigError:
    """Turn pydantic's first error into one line that names the key, the problem and the fix."""
    # A value that may be a number or "auto" fails as every member of the union: `train.epochs.float` and
    # `train.epochs.literal['auto']` both mean `train.epochs`.
    parts = [str(p) for p in first["loc"] if not re.fullmatch(r"int|float|bool|literal\[.*\]", str(p))]
    loc = ".".join(parts)
    if first["type"].startswith(("float_", "int_")) and first["input"] is not None:
        first = {**first, "msg": first["msg"] + ' (or "auto")'}
    if first["type"] == "extra_forbidden":
        key = str(first["loc"][-1])
        section = _section_at(first["loc"][:-1], data)
        known = list(section.model_fields) if section else []
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {', '.join(known)}"
        if first["loc"][0] == "method" and not close:
            name = _method_name(data)
            return ConfigError(
                f"{source}: method `{name}` has no option `{key}`", f"its options: {', '.join(known)}"
            )
        return ConfigError(f"{source}: unknown config key `{loc}`", hint)
    if first["type"] == "missing":
        return ConfigError(
            f"{source}: `{loc}` is required", "add it to the config or pass --set " + loc + "=..."
        )
    msg = first["msg"].removeprefix("Value error, ")
    return ConfigError(
        f"{source}: `{loc}`: {msg}" if loc else f"{source}: {msg}", "see `tuneforge train --help-config`"
    )


def _method_name(data: dict[str, Any]) -> str:
    m = data.get("method")
    return m if isinstance(m, str) else (m or {}).get("name", DEFAULT_METHOD)


def _section_at(loc: tuple, data: dict[str, Any]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        if part == "method":
            try:
                return registry.get(_method_name(data)).config_cls
            except KeyError:
                return MethodConfig
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model
