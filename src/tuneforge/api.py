"""The Python API: the functions the CLI commands and the service call, re-exported from where they live.

from tuneforge import api
cfg = api.load_config("examples/tickets-lora.yaml", ["train.epochs=1"])
summary = api.finetune(cfg)                       # train, then compare base vs tuned on the test split
api.compare_models("smollm2-135m", "runs/tickets-lora")
lm = api.load_model("runs/tickets-lora")          # a base model or a run, ready to generate
api.export_run("runs/tickets-lora", "gguf", quant="q8_0")  # llama.cpp file, checked against the tuned model
"""

from __future__ import annotations

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
    "train",
]
