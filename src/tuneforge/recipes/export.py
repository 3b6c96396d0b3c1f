"""`tuneforge export RUN --to FORMAT`: a finished run written as a merged Hugging Face folder, a GGUF file, a GGUF
LoRA beside its base, or an Ollama folder — then run the way its users would run it and compared with the tuned
model on the run's held-out test prompts (export/verify.py). The result lands in `export.json` inside the export.

Order of work: refuse what cannot be exported before loading anything; the reference answers come from the tuned
model (adapters folded in, fp32, one prompt at a time) before the weights are merged for writing; every file is
written under a temporary name and renamed when complete; verification runs on the renamed export, and a failed
check keeps the export but marks it failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from tuneforge.data.tokenize import label_set, prompt_of, prompt_text
from tuneforge.errors import ExportError
from tuneforge.eval import metrics as M
from tuneforge.export import FORMATS, common, gguf, gguf_lora, merged, ollama, quantize, verify
from tuneforge.methods import registry
from tuneforge.models.adapters import adapters_merged
from tuneforge.models.load import base_path_for, load_model, unique_tensors
from tuneforge.models.registry import hub_id_for, resolve
from tuneforge.recipes.runs import load_any, run_config, saved_splits
from tuneforge.rundir import RunDir

EXPORT_FILE = "export.json"
DEFAULT_QUANT = {"gguf": "f16", "gguf-lora": "f16", "ollama": "q8_0"}


def check_request(
    run_dir: Path, to: str, quant: str | None, out: Path | None, force: bool
) -> tuple[str | None, Path]:
    """Everything that can be refused without loading a model: the run, the format, the type, the output."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise ExportError(
            f"{run_dir} is not a tuneforge run folder (no config.yaml)", "give the run_dir of a run"
        )
    if not run.done.is_file() or run.trained_artifact() is None:
        raise ExportError(
            f"{run_dir} is not a finished run (no trained model yet)",
            f"finish it first: `tuneforge train {run.config} --resume`",
        )
    if to not in FORMATS:
        raise ExportError(f"unknown export format {to!r}", f"use one of {', '.join(FORMATS)}")
    spec = registry.get(run_config(run.root).method.name)
    if spec.recipe == "classify":
        raise ExportError(
            f"{run_dir} trained a classification head, which llama.cpp, Ollama and chat servers do not run",
            "serve it with `tuneforge serve`, or score it with `tuneforge eval`",
        )
    if to == "merged" and quant:
        raise ExportError(
            "--quant applies to GGUF exports", "leave it out for merged (the weights stay float)"
        )
    q = quantize.check_type(quant or DEFAULT_QUANT[to]) if to != "merged" else None
    if to != "merged":  # the architecture, from the config alone: no weights are loaded to refuse it
        gguf.check_architecture(model_config(run))
    out = Path(out) if out else run.root / "export" / (to if q is None else f"{to}-{q}")
    if out.exists() and not force:
        raise ExportError(f"{out} already exists", "pass --force to replace it, or choose another --out")
    return q, out


def model_config(run: RunDir) -> Any:
    """The transformers config of the run's model: the full weights' own, or the base's."""
    from transformers import AutoConfig

    cfg = run_config(run.root)
    artifact = run.trained_artifact()
    if (
        artifact is not None
        and (artifact / "config.json").is_file()
        and not (artifact / "adapter_config.json").is_file()
    ):
        return AutoConfig.from_pretrained(str(artifact))
    return AutoConfig.from_pretrained(base_path_for(resolve(cfg.model.name), None, cfg.model.revision))


def prompts_to_check(
    run_dir: Path, prompts_file: Path | None, limit: int | None
) -> tuple[list, list[str | None], Any]:
    """(conversations with their tools, reference answers or None, data config) to verify on."""
    train, _, test, cfg = saved_splits(run_dir)
    examples = test
    if prompts_file:
        from tuneforge.data.formats import load_file

        examples = load_file(prompts_file, cfg.data.format, cfg.data.columns, cfg.data.system_prompt).examples
        if not examples:
            raise ExportError(
                f"{prompts_file} holds no usable prompts", f"run `tuneforge data inspect {prompts_file}`"
            )
    examples = [e for e in examples if e.kind != "text"][: limit or None]
    labels = label_set(list(train) + list(examples))
    convs = [(prompt_of(e, cfg.data, labels), e.tools) for e in examples]
    return convs, [e.answer() for e in examples], cfg


def export_run(
    run_dir: str | Path,
    to: str,
    *,
    out: str | Path | None = None,
    quant: str | None = None,
    verify_export: bool = True,
    prompts: str | Path | None = None,
    limit: int | None = None,
    max_new_tokens: int = 64,
    dtype: str = "float32",
    force: bool = False,
    show: Any = None,
) -> dict[str, Any]:
    """Export a finished run; returns what export.json holds. `show(message)` reports progress."""
    say = show or (lambda msg: None)
    run_dir = Path(run_dir)
    q, out_path = check_request(run_dir, to, quant, Path(out) if out else None, force)
    if verify_export and to != "merged":  # refused before anything is written, not after
        verify.require_llama_cpp(" (or pass --no-verify to write it unchecked)")
    cfg = run_config(run_dir)
    t0 = time.time()
    say(f"loading {run_dir}")
    lm = load_any(str(run_dir), dtype="float32", device="cpu")
    tok = lm.tokenizer
    threads = os.cpu_count() or 1

    convs, refs, _ = (
        prompts_to_check(run_dir, Path(prompts) if prompts else None, limit)
        if verify_export
        else ([], [], None)
    )
    texts = [prompt_text(tok, c, tools) for c, tools in convs]
    reference = reference_answers(lm, run_dir, texts, max_new_tokens, say) if texts else []

    name = f"{run_dir.resolve().name}"
    hub_id = hub_id_for(cfg.model.name)
    adapter_state, peft_cfg = None, None
    if to == "gguf-lora":
        from peft import get_peft_model_state_dict

        if not getattr(lm.model, "peft_config", None):
            raise ExportError("this run trained full weights, not an adapter", "export --to gguf instead")
        peft_cfg = next(iter(lm.model.peft_config.values()))
        gguf_lora.check_adapter(peft_cfg)
        adapter_state = get_peft_model_state_dict(lm.model)
    model = merged.merge(lm.model)
    files: dict[str, str] = {}
    info: dict[str, Any] = {}
    say(f"writing {to}{f' ({q})' if q else ''} to {out_path}")
    with common.staged(out_path, force) as tmp:
        if to == "merged":
            info = merged.write(model, tok, tmp, dtype, hub_id)
            files["model"] = "."
        elif to in ("gguf", "ollama"):
            files["gguf"] = f"{name}-{q}.gguf"
            info = write_gguf(unique_tensors(model), model.config, tok, tmp / files["gguf"], q, name, threads)
            if to == "ollama":
                info["ollama"] = write_ollama(tmp, files["gguf"], tok, model.config, cfg.model.name)
                files["modelfile"] = "Modelfile"
        else:  # gguf-lora: the adapter, and the base it applies to
            base = load_model(cfg.model.name, dtype="float32", device="cpu").model
            files["base"] = f"{Path(str(cfg.model.name)).name}-{q}.gguf"
            files["lora"] = f"{name}-lora.gguf"
            info = write_gguf(
                unique_tensors(base), base.config, tok, tmp / files["base"], q, str(cfg.model.name), threads
            )
            info["lora"] = gguf_lora.write(adapter_state, peft_cfg, base.config, tmp / files["lora"], name)
            del base
    del model, lm
    result: dict[str, Any] = {
        "format": to,
        "quant": q,
        "dtype": dtype if to == "merged" else None,
        "run": str(run_dir),
        "base": cfg.model.name,
        "base_hub_id": hub_id,
        "out": str(out_path),
        "files": files,
        "bytes": common.dir_size(out_path),
        "write_seconds": round(time.time() - t0, 1),
        "details": info,
        "status": "unverified",
    }
    if reference:
        say(f"checking the export on {len(reference)} prompts")
        t1 = time.time()
        answers = export_answers(to, out_path, files, texts, max_new_tokens, threads)
        check = verify.compare(
            reference, answers, tok, verify.MIN_MATCH.get(q or "merged", verify.MIN_MATCH_DEFAULT)
        )
        if to in ("gguf", "ollama", "gguf-lora"):
            check["reasons"] += metadata_problems(out_path / files.get("gguf", files.get("base", "")), tok)
            check["passed"] = not check["reasons"]
        if all(r is not None for r in refs):
            check["task"] = task_scores(refs, reference, answers)
        check["seconds"] = round(time.time() - t1, 1)
        result["verification"] = check
        result["status"] = "passed" if check["passed"] else "failed"
    (out_path / EXPORT_FILE).write_text(json.dumps(result, indent=1, default=str))
    return result


def reference_answers(
    lm: Any, run_dir: Path, texts: list[str], max_new: int, say: Any
) -> list[verify.Answer]:
    """The tuned model's greedy answers to the prompts, kept in the run folder: exporting the same run to several
    formats answers them once. Keyed by the prompts, the token budget and the trained weights' file."""
    weights = sorted(RunDir(run_dir).trained_artifact().glob("*.safetensors"))
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    key = hashlib.sha1(json.dumps([texts, max_new, stamp]).encode()).hexdigest()[:16]
    cache = RunDir(run_dir).root / "export" / f".reference-{key}.json"
    if cache.is_file():
        say(f"reusing the tuned model's answers to {len(texts)} prompts ({cache.name})")
        return [verify.Answer(**a) for a in json.loads(cache.read_text())]
    say(f"answering {len(texts)} test prompts with the tuned model (the reference)")
    with adapters_merged(lm.model):
        answers = verify.transformers_answers(lm.model, lm.tokenizer, texts, max_new, lm.stop_token_ids)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(verify.answers_json(answers)))
    return answers


def write_gguf(state, config, tok, path: Path, q: str, name: str, threads: int) -> dict:
    """A GGUF in the asked type: written directly, or as f16 first and quantized by llama.cpp for the K-quants."""
    if q in gguf.PYTHON_TYPES:
        return gguf.write(state, config, tok, path, q, name)
    f16 = path.with_name(path.stem + ".f16-tmp.gguf")
    info = gguf.write(state, config, tok, f16, "f16", name)
    try:
        counts = quantize.quantize(f16, path, q, threads)
    finally:
        f16.unlink(missing_ok=True)
    return {**info, "quant": q, "quantizer": "llama.cpp", "tensors": counts}


def write_ollama(folder: Path, gguf_name: str, tok: Any, config: Any, base: str) -> dict:
    from tuneforge.models.registry import license_of

    template = ollama.translate_template(tok)
    stops = [t for _, t in common.stop_tokens(tok)]
    num_ctx = min(int(config.max_position_embeddings), 4096)
    text = ollama.modelfile_text(gguf_name, template, stops, num_ctx, license_of(base))
    (folder / "Modelfile").write_text(text)
    return {"stop": stops, "num_ctx": num_ctx, "system": template.system}


def export_answers(to: str, out: Path, files: dict, texts: list[str], max_new: int, threads: int) -> list:
    """The export's greedy answers, loaded as its users load it: transformers alone for a merged folder (its own
    tokenizer, chat template and generation config), llama.cpp for the GGUF files."""
    if to != "merged":
        lora = out / files["lora"] if to == "gguf-lora" else None
        return verify.llamacpp_answers(
            out / files.get("gguf", files.get("base", "")), texts, max_new, lora=lora, threads=threads
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype="float32").eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    eos = GenerationConfig.from_pretrained(str(out)).eos_token_id
    stops = eos if isinstance(eos, list) else [eos]
    return verify.transformers_answers(model, tok, texts, max_new, stops)


def metadata_problems(path: Path, tok: Any) -> list[str]:
    """What a GGUF user depends on besides the weights: the chat template the run trained with, and an
    end-of-generation set that holds every stop token."""
    import llama_cpp

    problems = []
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        if llm.metadata.get("tokenizer.chat_template") != tok.chat_template:
            problems.append("the GGUF's chat template differs from the run's")
        for i, t in common.stop_tokens(tok):
            if not llama_cpp.llama_vocab_is_eog(llm._model.vocab, i):
                problems.append(f"llama.cpp does not stop at {t!r}")
    finally:
        llm.close()
    return problems


def task_scores(refs: list, reference: list, answers: list) -> dict:
    """The task metric (strict exact match) of the tuned model and of the export on the same test split."""
    tuned = M.score(refs, [a.text.strip() for a in reference])["exact_match"]
    exported = M.score(refs, [a.text.strip() for a in answers])["exact_match"]
    return {"exact_match_tuned": tuned, "exact_match_export": exported, "difference": exported - tuned}
