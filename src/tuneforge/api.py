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


def _store_session(settings: Any):
    from tuneforge.jobs import store

    engine = store.engine_for(settings)
    store.init_db(engine)  # a data folder no server has opened yet has no tables
    return store.session_factory(engine)()
