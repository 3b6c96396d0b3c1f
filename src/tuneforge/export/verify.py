"""Run an export the way its users would and compare it with the tuned model, prompt by prompt.

Three questions per prompt, all greedy: does the export cut the rendered chat prompt into the same token ids; does
it give the same answer (and if not, where does it first differ); does the answer end at a stop token by itself
rather than running to the token limit. The reference is the tuned model in transformers, answering one prompt at
a time (no padding) so that nothing but the weights and the runtime differ.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.errors import ExportError

# The least share of greedy answers equal to the tuned model's for an export to pass. Float formats differ from the
# fp32 reference by rounding only; quantised ones change the weights, and a greedy answer flips at the first token
# whose top two logits are closer than the quantisation error.
MIN_MATCH = {"merged": 0.98, "f32": 0.98, "f16": 0.95, "bf16": 0.90, "q8_0": 0.85}
MIN_MATCH_DEFAULT = 0.50  # K-quants: reported, held to a looser bar
LLAMA_CPP_INSTALL = "pip install 'tuneforge[gguf]' (it builds llama.cpp: about 4 minutes on 2 cores)"


@dataclass
class Answer:
    prompt_ids: list[int]
    ids: list[int]  # the generated tokens, the stop token excluded
    stopped: bool  # ended at a stop token, not at max_new_tokens
    text: str


def transformers_answers(
    model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int, stop_ids: Sequence[int]
) -> list[Answer]:
    """Greedy answers of a transformers model, one prompt at a time."""
    out = []
    stops = set(stop_ids)
    device = next(model.parameters()).device
    for text in prompts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            gen = model.generate(
                torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=list(stop_ids),
                pad_token_id=tok.pad_token_id,
            )
        new = gen[0, len(ids) :].tolist()
        end = next((k for k, t in enumerate(new) if t in stops), None)
        answer = new if end is None else new[:end]
        out.append(Answer(ids, answer, end is not None, tok.decode(answer, skip_special_tokens=True)))
    return out


def require_llama_cpp(alternative: str = "") -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ExportError(
            "checking a GGUF export needs llama-cpp-python", f"install it: {LLAMA_CPP_INSTALL}{alternative}"
        )


def llamacpp_answers(
    gguf: Path,
    prompts: Sequence[str],
    max_new_tokens: int,
    lora: Path | None = None,
    n_ctx: int = 2048,
    threads: int | None = None,
) -> list[Answer]:
    """Greedy answers of llama.cpp (through llama-cpp-python) on a GGUF file, with an optional GGUF LoRA. Prompts are
    tokenized by llama.cpp itself, and an answer stops where llama.cpp's own end-of-generation test says so — the
    behaviour a user of llama.cpp or Ollama gets from the file's metadata."""
    require_llama_cpp()
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf),
        lora_path=str(lora) if lora else None,
        n_ctx=n_ctx,
        n_threads=threads,
        n_batch=512,
        verbose=False,
    )
    try:
        out = []
        for text in prompts:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            answer, stopped = [], False
            for t in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t):
                    stopped = True
                    break
                answer.append(t)
                if len(answer) >= max_new_tokens:
                    break
            text_out = llm.detokenize(answer).decode("utf-8", errors="replace")
            out.append(Answer(list(ids), answer, stopped, text_out))
        return out
    finally:
        llm.close()


def compare(reference: Sequence[Answer], export: Sequence[Answer], tok: Any, min_match: float) -> dict:
    """The verdict on one export: shares of identical tokenizations, equal answers and self-stopping answers, the
    first differing token of each differing answer, and pass / fail with the reason."""
    rows = []
    for i, (ref, got) in enumerate(zip(reference, export, strict=True)):
        row: dict[str, Any] = {"prompt": i, "same_prompt_ids": ref.prompt_ids == got.prompt_ids}
        row["same_answer"] = ref.ids == got.ids
        row["stopped"] = got.stopped
        if not row["same_answer"]:
            k = next(
                (k for k, (a, b) in enumerate(zip(ref.ids, got.ids, strict=False)) if a != b),
                min(len(ref.ids), len(got.ids)),
            )
            row["first_difference"] = {
                "position": k,
                "expected": tok.decode(ref.ids[k : k + 1]) if k < len(ref.ids) else "<stop>",
                "got": tok.decode(got.ids[k : k + 1]) if k < len(got.ids) else "<stop>",
            }
        rows.append(row)
    n = max(len(rows), 1)
    share = {key: sum(r[key] for r in rows) / n for key in ("same_prompt_ids", "same_answer", "stopped")}
    ref_stopped = sum(a.stopped for a in reference) / n
    reasons = []
    if share["same_prompt_ids"] < 1:
        reasons.append(f"{n - sum(r['same_prompt_ids'] for r in rows)} prompt(s) tokenized differently")
    if share["same_answer"] < min_match:
        reasons.append(f"{share['same_answer']:.1%} of answers equal, below the {min_match:.0%} required")
    if share["stopped"] < ref_stopped:
        reasons.append(
            f"{share['stopped']:.1%} of answers stop by themselves, the tuned model's {ref_stopped:.1%}"
        )
    return {
        "prompts": len(rows),
        "tokenization_identical": share["same_prompt_ids"],
        "answers_equal": share["same_answer"],
        "answers_stopped": share["stopped"],
        "reference_stopped": ref_stopped,
        "min_match": min_match,
        "passed": not reasons,
        "reasons": reasons,
        "differences": [r for r in rows if not (r["same_answer"] and r["same_prompt_ids"])][:20],
    }


def answers_json(answers: Sequence[Answer]) -> list[dict]:
    return [asdict(a) for a in answers]


def print_result(result: dict, console: Any) -> None:
    """The verification table of one export, and where it is."""
    from rich.table import Table

    v = result.get("verification")
    what = result["format"] + (f" ({result['quant']})" if result.get("quant") else "")
    console.print(f"[bold]export[/] {what} → {result['out']}  ({result['bytes'] / 1e6:.0f} MB)")
    tensors = (result.get("details") or {}).get("tensors")
    if tensors:  # a K-quant may hold other types where rows do not split into its blocks
        console.print("tensors by type: " + ", ".join(f"{k} x{n}" for k, n in sorted(tensors.items())))
    if not v:
        console.print("not verified (--no-verify, or no test prompts): run it yourself before trusting it")
        console.print(f"run it: {run_hint(result)}")
        return
    t = Table(title=f"{what} against the tuned model, {v['prompts']} prompts, greedy")
    for col in ("check", "result", "required"):
        t.add_column(col)
    t.add_row("prompt token ids identical", f"{v['tokenization_identical']:.1%}", "100%")
    t.add_row("greedy answers equal", f"{v['answers_equal']:.1%}", f">= {v['min_match']:.0%}")
    t.add_row(
        "answers stop by themselves",
        f"{v['answers_stopped']:.1%}",
        f">= {v['reference_stopped']:.1%} (tuned)",
    )
    if "task" in v:
        task = v["task"]
        t.add_row(
            "exact match (strict), export vs tuned",
            f"{task['exact_match_export']:.1f} vs {task['exact_match_tuned']:.1f}",
            "reported",
        )
    console.print(t)
    for d in v["differences"][:5]:
        fd = d.get("first_difference")
        if fd:
            console.print(
                f"  prompt {d['prompt']}: first differs at token {fd['position']}: {fd['expected']!r} → {fd['got']!r}"
            )
    if v["passed"]:
        console.print(f"[green]passed[/] — details in {result['out']}/export.json")
    else:
        console.print(
            f"[red]FAILED[/]: {'; '.join(v['reasons'])} (the export is kept; details in export.json)"
        )
    console.print(f"run it: {run_hint(result)}")


def run_hint(result: dict) -> str:
    """The command that runs this export in the runtime it was made for."""
    out, files = Path(result["out"]), result["files"]
    name = out.parent.parent.name.replace("_", "-").lower() or "tuned"
    if result["format"] == "merged":
        return f"vllm serve {out}   (or AutoModelForCausalLM.from_pretrained({str(out)!r}))"
    if result["format"] == "ollama":
        return f"cd {out} && ollama create {name} -f Modelfile && ollama run {name}"
    if result["format"] == "gguf-lora":
        return f"llama-server -m {out / files['base']} --lora {out / files['lora']} --jinja"
    return f"llama-server -m {out / files['gguf']} --jinja   (or llama-cli -m ... -cnv)"
