"""Before/after evaluation: the same held-out questions to the base model and to the tuned one.

The base model is judged fairly: zero-shot and few-shot (solved training examples in its prompt), each with a
strict and a lenient score (eval/metrics.py). When the tuned model is an adapter over the same base, the base's
answers come from the same weights with the adapter switched off — one copy in memory.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneforge.config import DataConfig, EvalConfig
from tuneforge.data.collate import collate
from tuneforge.data.schema import Example, Message
from tuneforge.data.tokenize import conversation, label_set, prompt_of, tokenize_examples
from tuneforge.eval import metrics as M
from tuneforge.eval.generate import SamplingParams, generate_chats
from tuneforge.models.adapters import adapters_merged, adapters_off
from tuneforge.models.load import LoadedModel, inference_autocast
from tuneforge.ops.lm_loss import weighted_lm_loss
from tuneforge.progress import bar


@dataclass
class Variant:
    key: str  # "base", "base_few_shot", "tuned"
    title: str  # shown in tables
    lm: LoadedModel
    adapters: bool = True  # False: answer with the PEFT adapter switched off (the base model)
    shots: list[Example] = field(default_factory=list)
    # Per-question prompt rewrite (retrieval-augmented prompts put each question's own passages in): gets the
    # example and its prompt (shots included), returns the prompt to send.
    rewrite: Callable[[Example, list[Message]], list[Message]] | None = None


def pick_shots(train: Sequence[Example], k: int, seed: int) -> list[Example]:
    """k solved examples with distinct answers where possible (so the base sees the range of outputs)."""
    if k <= 0 or not train:
        return []
    rng = random.Random(seed)
    pool = list(train)
    rng.shuffle(pool)
    shots, seen = [], set()
    for ex in pool:
        a = ex.answer()
        if a not in seen:
            shots.append(ex)
            seen.add(a)
        if len(shots) == k:
            return shots
    return (shots + [e for e in pool if e not in shots])[:k]


def with_shots(prompt: list[Message], shots: Sequence[list[Message]]) -> list[Message]:
    """System turns first, then each solved example as an earlier exchange, then the question."""
    system = [m for m in prompt if m.role == "system"]
    rest = [m for m in prompt if m.role != "system"]
    demo: list[Message] = []
    for conv in shots:
        demo += [m for m in conv if m.role != "system"]
    return system + demo + rest


def run_variant(
    v: Variant, examples: Sequence[Example], data_cfg: DataConfig, eval_cfg: EvalConfig, labels: Sequence[str]
) -> dict[str, Any]:
    if raw_text(examples):
        return score_by_loss(v, examples, data_cfg)
    shot_convs = [conversation(s, data_cfg, labels) for s in v.shots]
    convs = [with_shots(prompt_of(e, data_cfg, labels), shot_convs) for e in examples]
    if v.rewrite is not None:
        convs = [v.rewrite(e, c) for e, c in zip(examples, convs, strict=True)]
    params = SamplingParams(max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature, seed=0)
    t0 = time.time()
    with bar(f"Evaluating {v.title}", len(convs)) as progress:
        task = progress.add_task(f"Evaluating {v.title}", total=len(convs))
        with adapters_off(v.lm.model) if not v.adapters else adapters_merged(v.lm.model):
            gens = generate_chats(
                v.lm,
                convs,
                params,
                eval_cfg.batch_size,
                [e.tools for e in examples],
                on_batch=lambda n: progress.update(task, advance=n),
            )
    dt = time.time() - t0
    refs = [e.answer() or "" for e in examples]
    preds = [g.text for g in gens]
    scores = M.score(refs, preds, eval_cfg.metrics)
    return {
        "key": v.key,
        "title": v.title,
        "metrics": scores,
        "headline": M.headline(scores),
        "answers": preds,
        "seconds": dt,
        "ms_per_example": 1000 * dt / max(len(examples), 1),
        "prompt_tokens_mean": sum(g.prompt_tokens for g in gens) / max(len(gens), 1),
        "completion_tokens_mean": sum(g.completion_tokens for g in gens) / max(len(gens), 1),
        "shots": len(v.shots),
    }


def raw_text(examples: Sequence[Example]) -> bool:
    """A test split of raw text only (continued pre-training): scored by loss, with no questions or shots."""
    return bool(examples) and all(e.kind == "text" for e in examples)


def score_by_loss(v: Variant, examples: Sequence[Example], data_cfg: DataConfig) -> dict[str, Any]:
    """Raw text (continued pre-training) has no question to answer: a variant is scored by its loss and
    perplexity on the held-out texts, the objective it was trained on (lower is better; a negative gain is
    the improvement). The loss is shown x100 to sit on the report's 0-100 scale."""
    t0 = time.time()
    res = validation_loss(v.lm, examples, data_cfg, v.adapters, ())
    dt = time.time() - t0
    loss = res["loss"] if res else float("nan")
    headline = {"text loss (x100)": 100 * loss, "text perplexity": res["perplexity"] if res else float("nan")}
    return {
        "key": v.key,
        "title": v.title,
        "metrics": {"task": "text", "loss": loss, **headline},
        "headline": headline,
        "answers": [""] * len(examples),
        "seconds": dt,
        "ms_per_example": 1000 * dt / max(len(examples), 1),
        "prompt_tokens_mean": 0.0,
        "completion_tokens_mean": 0.0,
        "shots": 0,
    }


@torch.no_grad()
def validation_loss(
    lm: LoadedModel,
    examples: Sequence[Example],
    data_cfg: DataConfig,
    adapters: bool,
    labels: Sequence[str],
    batch_size: int = 16,
) -> dict[str, float] | None:
    """Loss and perplexity on answer tokens, the same objective training minimises."""
    import math

    if not examples:
        return None
    seqs, _ = tokenize_examples(examples, lm.tokenizer, data_cfg, labels, "validation")
    if not seqs:
        return None
    model = lm.model
    model.eval()
    seqs = sorted(seqs, key=len)
    loss = weight = 0.0
    with adapters_off(model) if not adapters else contextlib.nullcontext(), inference_autocast(lm.device):
        for i in range(0, len(seqs), batch_size):
            b = {
                k: t.to(lm.device)
                for k, t in collate(seqs[i : i + batch_size], lm.tokenizer.pad_token_id).items()
            }
            parts = weighted_lm_loss(model, b)
            loss += float(parts.loss_sum)
            weight += parts.weight_sum
    vl = loss / max(weight, 1e-9)
    return {"loss": vl, "perplexity": math.exp(min(vl, 50))}


def compare(
    base: LoadedModel,
    tuned: LoadedModel | None,
    test: Sequence[Example],
    *,
    train: Sequence[Example] = (),
    validation: Sequence[Example] = (),
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    seed: int = 0,
    shared_weights: bool = False,
) -> dict[str, Any]:
    """Evaluate base zero-shot, base few-shot and the tuned model on `test`; return the report dict.

    shared_weights: `base` and `tuned` are the same PEFT model; the base answers with adapters off.
    """
    test = list(test)
    if eval_cfg.max_examples:
        test = test[: eval_cfg.max_examples]
    labels = label_set(list(train) + test)
    who = "base " if tuned is not None else ""  # a lone model is just scored, not called "base"
    variants = [Variant("base", f"{who}(zero-shot)", base, adapters=not shared_weights)]
    shots = [] if raw_text(test) else pick_shots(train, eval_cfg.few_shot, seed)
    if shots:
        variants.append(
            Variant("base_few_shot", f"{who}({len(shots)}-shot)", base, not shared_weights, shots)
        )
    if tuned is not None:
        variants.append(Variant("tuned", "tuned", tuned, adapters=True))
    results = [run_variant(v, test, data_cfg, eval_cfg, labels) for v in variants]

    val = {}
    if validation:
        val["base"] = validation_loss(base, validation, data_cfg, not shared_weights, labels)
        if tuned is not None:
            val["tuned"] = validation_loss(tuned, validation, data_cfg, True, labels)

    report: dict[str, Any] = {
        "base_model": base.name,
        "tuned_model": str(tuned.run_dir or tuned.name) if tuned is not None else None,
        "n_test": len(test),
        "task": results[0]["metrics"]["task"] if results else None,
        "variants": [{k: v for k, v in r.items() if k != "answers"} for r in results],
        "validation": val,
        "samples": samples(test[: eval_cfg.samples], results, data_cfg, labels),
        "answers": [
            {"reference": ex.answer(), **{r["key"]: r["answers"][i] for r in results}}
            for i, ex in enumerate(test)
        ],
    }
    if tuned is not None:
        before = results[0]["headline"]
        after = results[-1]["headline"]
        report["gain"] = {k: after[k] - before[k] for k in after if k in before}
    tasks = per_task(test, results, eval_cfg)
    if tasks:
        report["tasks"] = tasks
    if tuned is not None and eval_cfg.general:
        report["forgetting"] = forgetting(base, tuned, data_cfg, eval_cfg, shared_weights)
    return report


def samples(
    examples: Sequence[Example], results: list[dict[str, Any]], data_cfg: DataConfig, labels: Sequence[str]
) -> list[dict[str, Any]]:
    """The report's side-by-side answers: where each question came from, the question, reference and answers."""
    out = []
    for i, ex in enumerate(examples):
        prompt = prompt_of(ex, data_cfg, labels)
        out.append(
            {
                "where": ex.source.where() if ex.source else f"test #{i + 1}",
                "question": next((m.content for m in reversed(prompt) if m.role == "user"), ""),
                "reference": ex.answer(),
                "answers": {r["key"]: r["answers"][i] for r in results},
            }
        )
    return out


def per_task(test: Sequence[Example], results: list[dict[str, Any]], eval_cfg: EvalConfig) -> dict[str, Any]:
    """Headline metrics per task of a multi-task run (examples carry meta["task"]); {} for one task."""
    names = sorted({str(e.meta.get("task")) for e in test if e.meta.get("task")})
    if len(names) < 2:
        return {}
    out: dict[str, Any] = {}
    for name in names:
        idx = [i for i, e in enumerate(test) if e.meta.get("task") == name]
        refs = [test[i].answer() or "" for i in idx]
        out[name] = {"n": len(idx)}
        for r in results:
            out[name][r["key"]] = M.headline(M.score(refs, [r["answers"][i] for i in idx], eval_cfg.metrics))
    return out


def forgetting(
    base: LoadedModel, tuned: LoadedModel, data_cfg: DataConfig, eval_cfg: EvalConfig, shared_weights: bool
) -> dict[str, Any] | None:
    """Catastrophic forgetting: the loss on a general held-out set (eval.general), base vs tuned."""
    from tuneforge.data.general import general_examples

    general = general_examples(eval_cfg.general, "eval")
    gcfg = DataConfig(train="general", max_length=max(data_cfg.max_length, 512), truncation="drop")
    before = validation_loss(base, general, gcfg, not shared_weights, ())
    after = validation_loss(tuned, general, gcfg, True, ())
    return general_loss_report(before, after, len(general))


def general_loss_report(base: dict | None, tuned: dict | None, n: int) -> dict[str, Any] | None:
    """Forgetting as the report shows it: general-set loss before and after, and the relative change."""
    if not base or not tuned:
        return None
    return {
        "n_general": n,
        "base_loss": base["loss"],
        "tuned_loss": tuned["loss"],
        "delta_loss": tuned["loss"] - base["loss"],
        "base_perplexity": base["perplexity"],
        "tuned_perplexity": tuned["perplexity"],
        "perplexity_change_pct": 100 * (tuned["perplexity"] / base["perplexity"] - 1),
    }
