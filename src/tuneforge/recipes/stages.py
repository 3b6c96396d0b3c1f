"""Sequential fine-tuning: the stages of one config (general → domain → task) trained in order, each from the
previous stage's result (recipes/build.py expands them).

Stage k trains into its own run folder inside the run's (`stage-K-NAME/`) and starts from stage k-1's result: its
full weights, or — for adapter methods — the base with the adapter merged in, written to the stage folder's
`merged/`. With `resume`, finished stages are skipped and an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.methods import registry
from tuneforge.progress import console
from tuneforge.recipes.build import stage_configs
from tuneforge.rundir import RunDir


def run_stages(
    cfg: RunConfig,
    finetune: Callable[..., dict[str, Any]],
    *,
    resume: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Train every stage in order, each through `finetune` (recipes/run.py); returns the last stage's summary
    with all stages listed under "stages"."""
    run = RunDir(cfg.run_dir)
    if overwrite and run.root.exists():
        shutil.rmtree(run.root)
    run.root.mkdir(parents=True, exist_ok=True)
    stages = stage_configs(cfg)
    done: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for k, (name, scfg) in enumerate(stages):
        stage = RunDir(scfg.run_dir)
        adapter = registry.get(scfg.method.name).artifact == "adapter"
        needs_merge = adapter and k < len(stages) - 1
        finished = stage.done.is_file() and (not needs_merge or stage.merged.is_dir())
        console.print(
            f"[bold]Stage {k + 1}/{len(stages)}: {name}[/] ({scfg.objective.name}, {scfg.method.name})"
        )
        if finished and resume:
            console.print(f"Stage {name} already finished in {stage.root}; skipped")
            summary = {"run_dir": str(stage.root), "train": stage.read_done()}
        else:
            summary = finetune(scfg, resume=resume and stage.config.is_file(), **options)
            if summary["train"].get("stopped_by_request"):
                return {**summary, "stages": done}
        if needs_merge and not stage.merged.is_dir():
            write_merged(stage)
        report = summary.get("report") or {}
        done.append(
            {
                "stage": name,
                "run_dir": str(stage.root),
                "starts_from": scfg.model.name,
                "gain": report.get("gain"),
                "forgetting": report.get("forgetting"),
            }
        )
        run.stages.write_text(json.dumps(done, indent=1, default=str))
    console.print(f"Stages done; the final model is [bold]{done[-1]['run_dir']}[/]")
    return {**summary, "stages": done}


def write_merged(stage: RunDir) -> Path:
    """The stage's adapter folded into its base, saved as a plain model folder the next stage starts from."""
    from tuneforge.recipes.runs import load_any

    lm = load_any(str(stage.root))
    model = lm.model.merge_and_unload() if hasattr(lm.model, "merge_and_unload") else lm.model
    out = stage.merged
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    lm.tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
