"""Exports of a tiny trained run: the merged folder loads in plain transformers and answers like the run; the GGUF
writer's file reads back tensor for tensor with llama.cpp's names and metadata; llama.cpp runs it (and the GGUF LoRA
over its base) with the run's tokenization; bad requests are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import capitals_records, tiny_config, write_jsonl
from tuneforge.errors import ExportError
from tuneforge.export import gguf as gguf_writer
from tuneforge.recipes.export import export_run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    from tuneforge.recipes.run import finetune

    tmp = tmp_path_factory.mktemp("export-run")
    data = write_jsonl(tmp / "capitals.jsonl", capitals_records(48))
    cfg = tiny_config(
        tiny_model_dir,
        data,
        tmp / "run",
        "method.name=lora",
        "method.r=4",
        "method.alpha=8",
        "train.epochs=2",
        "train.learning_rate=1e-2",
    )
    finetune(cfg, evaluate=False)
    return tmp / "run"


def test_merged_loads_in_plain_transformers_and_answers_like_the_run(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    result = export_run(lora_run, "merged", out=tmp_path / "merged", max_new_tokens=8)
    out = tmp_path / "merged"
    assert result["status"] == "passed", result["verification"]
    v = result["verification"]
    assert v["tokenization_identical"] == 1.0 and v["answers_equal"] == 1.0 and v["prompts"] > 0
    assert json.loads((out / "export.json").read_text())["status"] == "passed"
    tok = AutoTokenizer.from_pretrained(str(out))
    assert "<|im_start|>" in tok.chat_template
    eos = GenerationConfig.from_pretrained(str(out)).eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in n for n, _ in model.named_parameters())
    # the trained adapter itself now names no machine-local path as its base
    adapter_cfg = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    base = json.loads((lora_run / "adapter" / "tuneforge-base.json").read_text())
    assert base["local_path"] and adapter_cfg["base_model_name_or_path"] in (
        base["local_path"],
        base["hub_id"],
    )


def test_gguf_f16_reads_back_tensor_for_tensor(lora_run, tmp_path):
    from gguf import GGUFReader

    from tuneforge.export.merged import merge
    from tuneforge.models.load import unique_tensors
    from tuneforge.recipes.runs import load_any

    export_run(lora_run, "gguf", quant="f16", out=tmp_path / "g", verify_export=False)
    path = next((tmp_path / "g").glob("*.gguf"))
    lm = load_any(str(lora_run), dtype="float32", device="cpu")
    model = merge(lm.model)
    expected = gguf_writer.gguf_tensors(unique_tensors(model), model.config)
    r = GGUFReader(str(path))
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(expected)
    assert "output.weight" not in got  # tied: llama.cpp reuses token_embd
    for name, want in expected.items():
        t = got[name]
        data = np.asarray(t.data).reshape(want.shape)
        assert t.tensor_type.name == ("F32" if want.ndim == 1 else "F16"), name
        np.testing.assert_array_equal(data, want.astype(data.dtype), err_msg=name)
    # the permutation is llama.cpp's: undoing it gives Hugging Face's q_proj back
    q = expected["blk.0.attn_q.weight"]
    hf_q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    assert not np.array_equal(q, hf_q)
    n = model.config.num_attention_heads
    undone = q.reshape(n, q.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(q.shape)
    np.testing.assert_array_equal(undone, hf_q)

    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.chat_template"] == lm.tokenizer.chat_template
    assert r.fields["tokenizer.ggml.eos_token_id"].contents() == lm.tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert len(r.fields["tokenizer.ggml.tokens"].data) == model.config.vocab_size
    # the tokenizer the run trained with splits like GPT-2 (transformers' reading of the bundled GGUF drops the
    # digit-by-digit split llama.cpp's "smollm" type does): the export must tokenize as training did
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"


def test_q8_0_and_bf16_are_written_in_their_types(lora_run, tmp_path):
    from gguf import GGUFReader

    for q in ("q8_0", "bf16"):
        export_run(lora_run, "gguf", quant=q, out=tmp_path / q, verify_export=False)
        kinds = {t.tensor_type.name for t in GGUFReader(str(next((tmp_path / q).glob("*.gguf")))).tensors}
        assert kinds == {"F32", q.upper()}


def test_refusals_name_the_problem_and_write_nothing(lora_run, tmp_path, tiny_model_dir):
    (tmp_path / "taken").mkdir()
    cases = [
        (dict(run_dir=tmp_path, to="gguf"), "not a tuneforge run folder"),
        (dict(run_dir=lora_run, to="onnx"), "unknown export format"),
        (dict(run_dir=lora_run, to="gguf", quant="q3_z"), "unknown quantization type"),
        (dict(run_dir=lora_run, to="merged", quant="q8_0"), "--quant applies to GGUF"),
        (dict(run_dir=lora_run, to="gguf", out=tmp_path / "taken"), "already exists"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ExportError, match=message):
            export_run(**kwargs, verify_export=False)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((lora_run / "config.yaml").read_text())
    with pytest.raises(ExportError, match="not a finished run"):
        export_run(unfinished, "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "unfinished"]

    class Gemma:
        model_type = "gemma3"

    with pytest.raises(ExportError, match="'gemma3' architecture"):
        gguf_writer.check_architecture(Gemma())


def test_a_failed_write_leaves_nothing_under_the_asked_name(lora_run, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_writer, "write", boom)
    with pytest.raises(RuntimeError):
        export_run(lora_run, "gguf", out=tmp_path / "g", verify_export=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- llama.cpp
def test_llama_cpp_runs_the_gguf_with_the_runs_tokenization(lora_run, tmp_path):
    pytest.importorskip("llama_cpp")
    result = export_run(lora_run, "gguf", quant="f32", out=tmp_path / "g", max_new_tokens=8)
    v = result["verification"]
    assert v["tokenization_identical"] == 1.0, v["differences"][:3]
    assert v["answers_equal"] >= 0.9, v["differences"][:3]
    assert result["status"] == "passed", v["reasons"]


def test_llama_cpp_applies_the_gguf_lora_over_its_base(lora_run, tmp_path):
    pytest.importorskip("llama_cpp")
    result = export_run(lora_run, "gguf-lora", quant="f32", out=tmp_path / "l", max_new_tokens=8)
    assert {"base", "lora"} <= set(result["files"])
    v = result["verification"]
    assert v["tokenization_identical"] == 1.0 and v["answers_equal"] >= 0.9, v["differences"][:3]


def test_k_quants_come_from_llama_cpps_quantizer(lora_run, tmp_path):
    pytest.importorskip("llama_cpp")
    from gguf import GGUFReader

    export_run(lora_run, "gguf", quant="q4_k_m", out=tmp_path / "k", verify_export=False)
    kinds = {t.tensor_type.name for t in GGUFReader(str(next((tmp_path / "k").glob("*.gguf")))).tensors}
    assert kinds & {"Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q5_0", "Q4_0"}, kinds


def test_k_quants_without_llama_cpp_say_what_to_install(monkeypatch):
    import importlib.util

    from tuneforge.export import quantize

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    with pytest.raises(ExportError, match=r"tuneforge\[gguf\]"):
        quantize.check_type("q4_k_m")
    assert quantize.check_type("Q8_0") == "q8_0"


def test_rsLoRA_alpha_is_rescaled_for_llama_cpp():
    from types import SimpleNamespace

    from tuneforge.export.gguf_lora import check_adapter

    cfg = SimpleNamespace(peft_type=SimpleNamespace(value="LORA"), lora_alpha=8, r=16, use_rslora=True)
    assert check_adapter(cfg) == pytest.approx(8 * 4)  # alpha/sqrt(r) == (alpha*sqrt(r))/r
    with pytest.raises(ExportError, match="DoRA"):
        check_adapter(SimpleNamespace(**{**vars(cfg), "use_dora": True}))


def test_gemma3_exports_merged_and_the_gguf_formats_refuse_it_by_name(tmp_path, smol_dir, capitals_file):
    """A Gemma 3 (text) model, tiny and random: `merged` works and answers like the run in plain transformers; the
    GGUF writer, which knows the Llama family only, refuses it naming the architecture, before writing anything."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from tuneforge.recipes.run import finetune

    tok = AutoTokenizer.from_pretrained(str(smol_dir))
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    Gemma3ForCausalLM(cfg).save_pretrained(tmp_path / "gemma")
    tok.save_pretrained(tmp_path / "gemma")
    run = tmp_path / "run"
    finetune(
        tiny_config(
            tmp_path / "gemma", capitals_file, run, "method.name=lora", "method.r=4", "train.epochs=1"
        ),
        evaluate=False,
    )
    result = export_run(run, "merged", max_new_tokens=6, limit=4)
    assert result["status"] == "passed", result["verification"]["reasons"]
    for to in ("gguf", "ollama", "gguf-lora"):
        with pytest.raises(ExportError, match="gemma3"):
            export_run(run, to, verify_export=False)
    assert sorted(p.name for p in (run / "export").iterdir() if not p.name.startswith(".")) == ["merged"]
