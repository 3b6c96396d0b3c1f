"""train.compile: the compiled training step learns what the eager one learns (same losses), validation and
generation run eagerly afterwards, and `auto` says why it does not compile where it cannot."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_config
from tuneforge import api
from tuneforge.errors import ConfigError
from tuneforge.train import compile as compile_layers

STEPS = [
    "method.name=lora",
    "method.r=8",
    "train.max_steps=4",
    "train.learning_rate=1e-2",
    "train.eval_every=2",
]


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_compiled_step_matches_eager_and_evaluates(tiny_model_dir, capitals_file, tmp_path):
    import torch._dynamo

    runs = {}
    for mode in ("false", "true"):
        cfg = tiny_config(
            tiny_model_dir,
            capitals_file,
            tmp_path / mode,
            *STEPS,
            "train.precision=bf16-mixed",
            f"train.compile={mode}",
            "eval.general=null",  # forgetting is not what this test is about
        )
        torch._dynamo.reset()  # an earlier test may have compiled the same graphs in this process
        torch._dynamo.utils.counters.clear()
        # only the compiled run is evaluated: the claim is that its generation runs after a compiled step
        summary = api.finetune(cfg, show=False, evaluate=mode == "true")
        runs[mode] = (
            _losses(tmp_path / mode),
            torch._dynamo.utils.counters["stats"]["unique_graphs"],
            summary,
        )
    eager, compiled = runs["false"], runs["true"]
    assert eager[1] == 0 and compiled[1] > 0  # the compiled run did compile
    assert compiled[0] == pytest.approx(eager[0], rel=2e-2)  # and took the same steps
    assert compiled[2]["report"]["variants"][-1]["metrics"]  # generation after training ran (eagerly)


def test_auto_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(compile_layers.shutil, "which", lambda name: None)
    use, why = compile_layers.resolve("auto", "lora", cpu)
    assert not use and "C++ compiler" in why
    with pytest.raises(ConfigError, match="apt install g\\+\\+"):
        compile_layers.resolve(True, "lora", cpu)
    monkeypatch.setattr(compile_layers.shutil, "which", lambda name: "/usr/bin/" + name)
    assert compile_layers.resolve("auto", "lora", cpu)[0]
    use, why = compile_layers.resolve("auto", "prefix", cpu)
    assert not use and "train.compile: true" in why
    assert compile_layers.resolve(False, "lora", cpu) == (False, "train.compile is false")


def test_auto_compiles_only_when_it_pays(tiny_model_dir, capitals_file, tmp_path, monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(compile_layers, "marker_root", lambda: tmp_path / "markers")
    monkeypatch.setitem(compile_layers.SAVING, "cpu", 0.08)  # as if compiling paid on this device
    messages = {}
    for name, cost in (("costly", 1e9), ("cheap", 0.0)):
        monkeypatch.setattr(compile_layers, "COST_COLD_S", cost)
        cfg = tiny_config(
            tiny_model_dir,
            capitals_file,
            tmp_path / name,
            *STEPS,
            "train.precision=bf16-mixed",
            "train.compile=auto",
        )
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        events: list[tuple[str, dict]] = []
        api.finetune(
            cfg, show=False, evaluate=False, on_event=lambda kind, data, ev=events: ev.append((kind, data))
        )
        messages[name] = [d["message"] for k, d in events if k == "message" and "ompil" in d["message"]]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == (name == "cheap"), messages[name]
    assert (
        messages["costly"][0].startswith("Not compiling: ") and "train.compile: true" in messages["costly"][0]
    )
    assert messages["cheap"][0].startswith("Compiling the decoder layers: ")
    assert "first compile on this machine" in messages["cheap"][0]
    assert list((tmp_path / "markers").iterdir())  # the next run knows the cache is warm


def test_pays_weighs_the_rest_of_the_run_against_the_cache_state():
    # 1 minute: not even a cached compile pays; 10 minutes: a first compile costs more than it saves
    assert not compile_layers.pays(60, warm=True, device_type="cuda")[0]
    assert compile_layers.pays(600, warm=True, device_type="cuda")[0]
    assert not compile_layers.pays(600, warm=False, device_type="cuda")[0]
    assert compile_layers.pays(3600, warm=False, device_type="cuda")[0]
    # CPU: measured no faster than the fused eager step, however long the run
    use, why = compile_layers.pays(36000, warm=True, device_type="cpu")
    assert not use and "train.compile: true" in why
