"""The Python API: the functions the CLI commands and the service call, re-exported from where they live.

from tuneforge import api
cfg = api.load_config("examples/tickets-lora.yaml", ["train.epochs=1"])
summary = api.finetune(cfg)                       # train, then compare base vs tuned on the test split
api.compare_models("smollm2-135m", "runs/tickets-lora")
lm = api.load_model("runs/tickets-lora")          # a base model or a run, ready to generate
api.export_run("runs/tickets-lora", "gguf", quant="q8_0")  # llama.cpp file, checked against the tuned model
api.feedback_datasets(settings, "alice", "feedback/", deployment="tickets-prod")  # KTO / DPO / SFT files
api.deployment_figures(settings, "alice", "tickets-prod")  # per-arm figures and the test between arms
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig, EvalConfig, RunConfig, dump_config
from tuneforge.recipes.build import build_config, load_config
from tuneforge.recipes.evaluate import compare_models, load_eval_data
from tuneforge.recipes.export import export_run
from tuneforge.recipes.run import finetune, train
from tuneforge.recipes.runs import load_any as load_model
from tuneforge.recipes.runs import saved_splits

__all__ = [
    "DataConfig",
    "EvalConfig",
    "RunConfig",
    "build_config",
    "compare_models",
    "dump_config",
    "export_run",
    "finetune",
    "load_config",
    "load_eval_data",
    "load_model",
    "saved_splits",
    "deployment_figures",
    "feedback_datasets",
    "tune_from_feedback",
    "train",
]


# ------------------------------------------------------------------------------------------ feedback loop
# On the service's store (settings: its data folder and database), for one tenant.
def feedback_datasets(
    settings: Any, owner: str, out: str | Path, *, deployment: str | None = None, model: str | None = None
) -> dict[str, Any]:
    """Write kto.jsonl / dpo.jsonl / sft.jsonl from the tenant's stored completions and their feedback into
    `out`; returns {"files": {kind: path}, "counts": what was used and skipped, and why}."""
    from tuneforge.experiments.feedback import build_datasets
    from tuneforge.jobs import feedback as fb

    with _store_session(settings) as s:
        built = build_datasets(fb.answers(s, owner, deployment=deployment, model=model))
    files = built.write(Path(out))
    return {"files": {k: str(v) for k, v in files.items()}, "counts": built.counts()}


def deployment_figures(settings: Any, owner: str, name: str) -> dict[str, Any]:
    """A deployment's per-arm figures and the test between arms (what GET /v1/deployments/NAME/stats shows)."""
    from tuneforge.errors import TuneforgeError
    from tuneforge.experiments.feedback import deployment_stats
    from tuneforge.jobs import feedback as fb

    with _store_session(settings) as s:
        d = fb.get_deployment(s, owner, name)
        if d is None:
            raise TuneforgeError(
                f"tenant {owner!r} has no deployment {name!r}", "list them: GET /v1/deployments"
            )
        return deployment_stats(name, d.arms, d.shadow, *fb.stats_inputs(s, owner, d))


def tune_from_feedback(
    settings: Any,
    owner: str,
    deployment: str,
    out: str | Path,
    *,
    canary: float = 0.1,
    objective: str = "auto",
    tolerance: float = 2.0,
    forgetting_tolerance: float = 10.0,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """The deployment's current version (its first arm) trained on its feedback, gated against it on the held-out
    set, and — only if the gate passes — added to the deployment as a canary taking `canary` of the traffic. The
    gate's record (numbers, decision, canary) is returned, written to OUT/gate.json and kept in the deployment's
    history."""
    import uuid

    from sqlalchemy import select

    from tuneforge.errors import TuneforgeError
    from tuneforge.experiments.feedback_tune import tune_from_feedback as tune
    from tuneforge.jobs import feedback as fb
    from tuneforge.jobs import store

    out = Path(out)
    with _store_session(settings) as s:
        d = fb.get_deployment(s, owner, deployment)
        if d is None:
            raise TuneforgeError(
                f"tenant {owner!r} has no deployment {deployment!r}", "list them: GET /v1/deployments"
            )
        current = s.scalar(
            select(store.FineTunedModel).where(
                store.FineTunedModel.id == d.arms[0]["model"], store.FineTunedModel.owner == owner
            )
        )
        if current is None:
            raise TuneforgeError(
                f"the first arm of {deployment!r} ({d.arms[0]['model']}) is a base model, not a fine-tuned one",
                "put the version in production first in the deployment's arms",
            )
        current_id, base, run_dir = current.id, current.base, current.run_dir
    files = {
        k: Path(v)
        for k, v in feedback_datasets(settings, owner, out / "feedback", deployment=deployment)[
            "files"
        ].items()
    }
    record = tune(
        Path(run_dir),
        files,
        out,
        objective=objective,
        tolerance=tolerance,
        forgetting_tolerance=forgetting_tolerance,
        sets=sets,
    )
    record["current_model"] = current_id
    if record["passed"]:
        with _store_session(settings) as s, s.begin():
            model_id = f"ft:{base}:{owner}:{deployment}-fb-{uuid.uuid4().hex[:8]}"
            s.add(
                store.FineTunedModel(
                    id=model_id,
                    owner=owner,
                    base=base,
                    job_id="feedback",
                    run_dir=str((out / "candidate").resolve()),
                    training_type="lora",
                    created_at=int(store.now()),
                )
            )
            d = fb.get_deployment(s, owner, deployment)
            total = sum(a["weight"] for a in d.arms)
            weight = total * canary / (1 - canary)  # its share of the new total is `canary`
            d.arms = [*d.arms, {"model": model_id, "weight": weight}]
            record["canary"] = {"model": model_id, "share": canary}
            fb.note_change(d, f"gate passed: canary {model_id}", gate=record)
    else:
        with _store_session(settings) as s, s.begin():
            fb.note_change(fb.get_deployment(s, owner, deployment), "gate refused the candidate", gate=record)
    (out / "gate.json").write_text(json.dumps(record, indent=1))
    return record


def _store_session(settings: Any):
    from tuneforge.jobs import store

    engine = store.engine_for(settings)
    store.init_db(engine)  # a data folder no server has opened yet has no tables
    return store.session_factory(engine)()
