"""Method options and the combinations refused at config validation, each with a one-line message saying what
to use instead; layer-wise learning rates; gradual unfreezing on schedule and across a resume; shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, tiny_config
from tuneforge.config import apply_overrides
from tuneforge.errors import ConfigError
from tuneforge.recipes.build import build_config, load_config

BASE = {"data": {"train": "x.jsonl"}}


def _build(*overrides: str):
    return build_config(apply_overrides(json.loads(json.dumps(BASE)), list(overrides)), "test")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method.name=qlora"], "use method lora (or dora) instead"),
        (["method.name=prefix", "train.packing=true"], "set train.packing=false"),
        (["method.name=prompt_tuning", "train.packing=true"], "set train.packing=false"),
        (["method.name=classifier", "method.adapter=prefix"], "use adapter lora (or dora)"),
        (["method.name=classifier", "data.format=chat"], "set data.format classification"),
        (["method.name=classifier", "method.adapter=lora", "method.freeze_base=true"], "with adapter none"),
        (["method.name=freeze"], "`method.freeze_layers` is required"),
        (["method.name=full", "method.layer_lr_decay=1.5"], "method.layer_lr_decay"),
        (["method.name=unfreeze", "method.unit=hour"], "method.unit"),
    ],
)
def test_impossible_combinations_are_refused_with_what_to_use(monkeypatch, overrides, message):
    monkeypatch.setattr("tuneforge.methods.qlora.cuda_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        _build(*overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_variants_set_their_peft_options():
    from peft import LoraConfig

    from tuneforge.methods.lora import lora_config

    class M(torch.nn.Module):
        config = type("C", (), {"architectures": ["LlamaForCausalLM"]})()

    assert _build("method.name=rslora").method.use_rslora
    assert _build("method.name=dora").method.use_dora
    lc = lora_config(M(), _build("method.name=dora", "method.r=4").method)
    assert isinstance(lc, LoraConfig) and lc.use_dora and lc.r == 4 and lc.task_type == "CAUSAL_LM"


def test_every_shipped_method_config_is_valid(monkeypatch):
    monkeypatch.setattr("tuneforge.methods.qlora.cuda_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    configs = sorted((REPO / "examples" / "methods").glob("*.yaml"))
    assert len(configs) >= 12
    for path in configs:
        cfg = load_config(path)
        assert Path(REPO / cfg.data.train).is_file(), path
        assert cfg.method.name in path.stem.replace("-", "_").replace("full_llrd", "full")


def test_layer_lr_decay_gives_each_layer_its_rate(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.train.optim import build_optimizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = _build("method.name=full", "method.layer_lr_decay=0.5", "train.learning_rate=1e-2")
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    layers = model.model.layers
    assert lr_of[id(layers[1].mlp.up_proj.weight)] == pytest.approx(1e-2)  # top layer
    assert lr_of[id(layers[0].mlp.up_proj.weight)] == pytest.approx(5e-3)
    assert lr_of[id(model.model.embed_tokens.weight)] == pytest.approx(2.5e-3)  # below the lowest layer
    assert lr_of[id(model.model.norm.weight)] == pytest.approx(1e-2)
    n_params = len({id(p) for p in model.parameters()})
    assert len(lr_of) == n_params  # every parameter exactly once


def test_freeze_by_name_pattern(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.methods import registry

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = _build("method.name=freeze", "method.freeze_modules=['*.self_attn.*']").method
    registry.get("freeze").prepare(model, cfg)
    for n, p in model.named_parameters():
        assert p.requires_grad == ("self_attn" not in n and "embed_tokens" not in n), n
    bad = _build("method.name=freeze", "method.freeze_modules=['*.attention.*']").method
    with pytest.raises(ConfigError, match="match no parameter"):
        registry.get("freeze").prepare(AutoModelForCausalLM.from_pretrained(tiny_model_dir), bad)


def test_gradual_unfreezing_follows_its_schedule_and_resumes_exactly(tiny_model_dir, capitals_file, tmp_path):
    from safetensors.torch import load_file

    from tuneforge.recipes.run import train as run_training

    common = [
        "method.name=unfreeze",
        "method.unit=step",
        "method.every=4",
        "method.initial_layers=0",
        "train.max_steps=12",
        "train.eval_every=4",
        "train.learning_rate=1e-2",
    ]
    events: list[str] = []
    straight = tiny_config(tiny_model_dir, capitals_file, tmp_path / "a", *common)
    run_training(straight, on_event=lambda kind, p: events.append(p.get("message", "")))
    assert any("step 4: top 1 of 2 layers" in m for m in events)
    assert any("step 8: top 2 of 2 layers" in m for m in events)

    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "b", *common)
    calls = {"n": 0}

    def stop_after_6() -> bool:
        calls["n"] += 1
        return calls["n"] > 6

    res, _ = run_training(cfg, should_stop=stop_after_6)
    assert res.stopped_by_request and res.steps == 6
    run_training(cfg, resume=True)
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "val_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    layer0 = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(before[layer0], wa[layer0])  # the bottom layer was unfrozen and trained


def test_methods_command_lists_every_method():
    from typer.testing import CliRunner

    from tuneforge.cli import app
    from tuneforge.methods import registry

    out = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "250"}).output
    for spec in registry.available():
        assert spec.name in out
