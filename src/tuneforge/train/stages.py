"""Sequential fine-tuning: general → domain → task stages declared in one config.

    stages:
      - {name: domain, data: {train: docs.jsonl, format: text, train_on: all}, train: {epochs: 1}}
      - {name: task, data: {train: tickets.jsonl}}

Each stage is a partial config laid over the run's own (what it does not say it inherits; a stage that names
another method or objective replaces that section instead of merging into it). Stage k trains into
`run_dir/stage-k-NAME` and starts from stage k-1's result: its full weights, or — for adapter methods — the base
with the adapter merged in, written to the stage folder's `merged/`. `tuneforge train` runs the stages in order;
with `--resume` finished stages are skipped and an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError

STAGE_KEYS = {"name", "data", "model", "method", "train", "objective", "forgetting", "eval", "seed"}
REPLACED = ("method", "objective")  # sections replaced, not merged, when a stage names another kind


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


def stage_dicts(cfg: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, config dict) of every stage, in order, with run folders and starting models filled in."""
    from tuneforge.methods import registry

    base = cfg.model_dump(mode="json", exclude_unset=True)
    base.pop("stages", None)
    base.setdefault("model", {})
    out: list[tuple[str, dict[str, Any]]] = []
    prev: Path | None = None
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
        d["run_dir"] = str(Path(cfg.run_dir) / f"stage-{k + 1}-{name}")
        if prev is not None:
            d.setdefault("model", {})["name"] = str(prev)
        method = d.get("method") or "lora"
        method_name = method if isinstance(method, str) else method.get("name", "lora")
        artifact = registry.get(method_name).artifact
        prev = Path(d["run_dir"]) / ("merged" if artifact == "adapter" else artifact)
        out.append((name, d))
    return out


def check_stages(cfg: Any) -> None:
    if not cfg.stages:
        return
    from tuneforge.config import build_config

    for k, (name, d) in enumerate(stage_dicts(cfg)):
        try:
            build_config(d, f"stages[{k}] ({name})")
        except TuneforgeError as e:
            raise ValueError(e.problem + (f" ({e.fix})" if e.fix else "")) from None


def stage_configs(cfg: Any) -> list[tuple[str, Any]]:
    from tuneforge.config import build_config

    return [(name, build_config(d, f"stage {name}")) for name, d in stage_dicts(cfg)]


def merged_path(stage_cfg: Any) -> Path:
    return Path(stage_cfg.run_dir) / "merged"


def write_merged(run_dir: Path, out: Path) -> Path:
    """The stage's adapter folded into its base, saved as a plain model folder the next stage starts from."""
    import shutil

    from tuneforge.models.load import load_model

    lm = load_model(str(run_dir))
    model = lm.model.merge_and_unload() if hasattr(lm.model, "merge_and_unload") else lm.model
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    lm.tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def run_stages(cfg: Any, *, resume: bool = False, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Train every stage in order (each through api.finetune); returns the last stage's summary + all stages."""
    from tuneforge import api
    from tuneforge.methods import registry
    from tuneforge.progress import console

    root = Path(cfg.run_dir)
    if overwrite and root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    stages = stage_configs(cfg)
    done: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for k, (name, scfg) in enumerate(stages):
        sdir = Path(scfg.run_dir)
        adapter = registry.get(scfg.method.name).artifact == "adapter"
        needs_merge = adapter and k < len(stages) - 1
        finished = (sdir / "train_done.json").is_file() and (not needs_merge or merged_path(scfg).is_dir())
        console.print(
            f"[bold]Stage {k + 1}/{len(stages)}: {name}[/] ({scfg.objective.name}, {scfg.method.name})"
        )
        if finished and resume:
            console.print(f"Stage {name} already finished in {sdir}; skipped")
            summary = {"run_dir": str(sdir), "train": json.loads((sdir / "train_done.json").read_text())}
        else:
            summary = api.finetune(scfg, resume=resume and (sdir / "config.yaml").is_file(), **options)
            if summary["train"].get("stopped_by_request"):
                return {**summary, "stages": done}
        if needs_merge and not merged_path(scfg).is_dir():
            write_merged(sdir, merged_path(scfg))
        report = summary.get("report") or {}
        done.append(
            {
                "stage": name,
                "run_dir": str(sdir),
                "starts_from": scfg.model.name,
                "gain": report.get("gain"),
                "forgetting": report.get("forgetting"),
            }
        )
        (root / "stages.json").write_text(json.dumps(done, indent=1, default=str))
    console.print(f"Stages done; the final model is [bold]{done[-1]['run_dir']}[/]")
    return {**summary, "stages": done}
