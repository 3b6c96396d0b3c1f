"""Every registered method through the same checks on the tiny model (PEFT's habit of one test matrix):
it learns (validation loss falls and the task metric — accuracy on the answer tokens — rises), it saves its
standard artifact, and that artifact loads back into a model that gives the outputs of the model trained."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config
from tuneforge.methods import registry
from tuneforge.recipes.lm import FineTune

# Per method: options and a learning rate at which the tiny model learns the capitals in a few steps.
MATRIX: dict[str, list[str]] = {
    "full": ["train.learning_rate=1e-2"],
    "freeze": [
        "method.freeze_layers=1",
        "method.freeze_modules=['*.self_attn.o_proj.*']",
        "train.learning_rate=1e-2",
    ],
    "unfreeze": ["method.unit=step", "method.every=4", "method.initial_layers=1", "train.learning_rate=1e-2"],
    "lora": ["method.r=8", "train.learning_rate=2e-2"],
    "rslora": ["method.r=8", "train.learning_rate=2e-2"],
    "dora": ["method.r=8", "train.learning_rate=2e-2"],
    "ia3": ["train.learning_rate=3e-1"],
    "prefix": ["method.num_virtual_tokens=8", "train.learning_rate=1e-1"],
    "prompt_tuning": ["method.num_virtual_tokens=8", "train.learning_rate=2e-1"],
    "adaption_prompt": ["method.adapter_len=8", "train.learning_rate=1e-1"],
}
# Methods that only condition a frozen random network (a vector per layer, or virtual tokens) lower its loss but
# cannot make it name a capital in a few steps; their task metric is shown rising on SmolLM2 (README, Methods).
CONDITIONING = {"ia3", "prefix", "prompt_tuning", "adaption_prompt"}
GPU_ONLY = {"qlora"}  # tests/methods/test_rules.py checks its refusal on CPU


def test_matrix_covers_every_registered_method():
    names = {s.name for s in registry.available() if s.recipe == "lm"}
    assert names - GPU_ONLY == set(MATRIX)


@torch.no_grad()
def _last_logits(model, tok) -> torch.Tensor:
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Capital of Peru?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, return_tensors="pt")["input_ids"]
    model.eval()
    return model(input_ids=ids.to(next(model.parameters()).device)).logits[:, -1].float()


@pytest.mark.parametrize("method", sorted(MATRIX))
def test_method_learns_saves_and_reloads(method, tiny_wide_init_dir, capitals_file, tmp_path):
    from tuneforge.recipes.runs import load_any as load_model

    run = tmp_path / "run"
    cfg = tiny_config(
        tiny_wide_init_dir,
        capitals_file,
        run,
        f"method.name={method}",
        *MATRIX[method],
        f"train.max_steps={24 if method in CONDITIONING else 16}",
        "train.eval_every=100",
    )
    ft = FineTune(cfg)
    ft.setup()
    before = ft.loop.validation_loss()
    ft.loop.train()
    ft.loop.finish()
    after = ft.loop.validation_loss()
    if method in CONDITIONING:
        assert after["val_loss"] < before["val_loss"] - 0.1, (before, after)
        assert after["val_token_accuracy"] >= before["val_token_accuracy"], (before, after)
    else:
        assert after["val_loss"] < 0.9 * before["val_loss"], (before, after)
        assert after["val_token_accuracy"] > before["val_token_accuracy"], (before, after)

    spec = registry.get(method)
    artifact = run / spec.artifact
    if spec.artifact == "adapter":  # a standard PEFT adapter: peft itself reads it
        from peft import PeftConfig

        assert (artifact / "adapter_model.safetensors").is_file()
        assert PeftConfig.from_pretrained(str(artifact)).peft_type is not None
    else:
        assert (artifact / "model.safetensors").is_file()
    trained = ft.loop.unwrapped
    loaded = load_model(str(run))
    assert loaded.method == method
    torch.testing.assert_close(
        _last_logits(loaded.model, loaded.tokenizer),
        _last_logits(trained, ft.lm.tokenizer),
        rtol=1e-4,
        atol=1e-4,
    )
