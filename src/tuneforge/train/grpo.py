"""GRPO (Shao et al. 2024, DeepSeekMath): reinforcement from rewards a program computes, no value model.

Each training item is a prompt (the record's turns before its last answer; that answer is the reference the
rewards may compare with). For every micro-batch of prompts the policy samples `num_generations` answers per
prompt in one batched generate() with the KV cache (all of a prompt's samples side by side), the reward functions
(train/rewards.py) score them, and each answer's advantage is its reward against its group's:

    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)

The loss per answer token t follows TRL's GRPOTrainer with one update per sampled batch:

    ratio_t = pi(t) / pi_old(t)            (pi_old: the sampling policy, i.e. these weights, detached)
    loss_t  = -min(ratio_t A, clip(ratio_t, 1 - eps, 1 + eps) A) + beta KL_t
    KL_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1    (the k3 estimator; ref: adapters off, no copy)

averaged over each answer's tokens, then summed over answers and divided by all answers of the optimizer step.
With one update per sample the ratio is 1 and the clip never binds (its fraction is logged to show it); the
gradient is A times that of the answer's log-probability, plus the KL term's.

A group whose answers all score the same (zero variance) has A = 0 for every answer and teaches nothing: its
answers are counted (`zero_variance`, the share of answers in such groups) and left out of the loss, so they give
no gradient, not even the KL term's. Sampling is seeded by (seed, step, micro-batch, rank), so a resumed run
samples what an uninterrupted one samples.

Logged per step: `reward` (the mean total), `reward_<name>` for each function, `reward_std` (mean within-group
standard deviation), `zero_variance`, `kl`, `completion_length` (tokens), `clip_fraction`, and the seconds spent
sampling and scoring (`generation_s`) — the rest of the step's `seconds` is training. Validation answers greedily,
once per prompt; its loss is minus the mean reward, so early stopping and the best checkpoint follow the reward.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuneforge.config import ObjectiveConfig
from tuneforge.data.schema import Example
from tuneforge.data.tokenize import TokenizeReport, prompt_of, prompt_text
from tuneforge.errors import DataError
from tuneforge.models.adapters import adapters_off
from tuneforge.ops.lm_loss import backbone_and_head
from tuneforge.train import distributed, rewards
from tuneforge.train.objectives import Objective, StepLoss

NEEDS_REFERENCE = ("exact_match", "field_match", "length_penalty")


@dataclass
class PromptItem:
    """One GRPO training item: a prompt's token ids, its rendered text, and the record (for the rewards)."""

    prompt_ids: list[int]
    prompt: str
    example: Example
    span: int  # rows x tokens it fills in a micro-batch: num_generations x (prompt + max_new_tokens)
    index: int = 0
    key: int = 0  # this item's place in the objective's table of items (batches carry keys, not records)

    @property
    def source(self) -> Any:
        return self.example.source

    @property
    def n_target(self) -> int:
        return self.span - len(self.prompt_ids)

    def __len__(self) -> int:
        # The loop sizes micro-batches and groups by length from this: all of the prompt's sampled rows.
        return self.span


class GRPO(Objective):
    name = "grpo"
    accuracy = "reward"  # logged: correct / norm = the mean total reward of the step's answers
    perplexity = False

    def __init__(self, o: ObjectiveConfig, seed: int):
        self.o, self.seed = o, seed
        self.rewards = rewards.build(o.rewards)
        self.items: list[PromptItem] = []
        self.tok: Any = None
        self.step = 0
        self._micro = 0
        self._generation_s = 0.0

    # ---------------------------------------------------------------------------------------------- data
    def tokenize(self, examples, tok, data_cfg, labels, split):
        """Records → prompts (the turns before the last answer, rendered for generation). A record with no
        prompt, or none of the reference answer a reward compares with, or a prompt that leaves no room for
        max_new_tokens within data.max_length, is dropped and kept with its reason."""
        self.tok = tok
        rep = TokenizeReport(examples_in=len(examples))
        needs_ref = [r.kind for r in self.o.rewards if r.kind in NEEDS_REFERENCE]
        g, new = self.o.num_generations, self.o.max_new_tokens
        out: list[PromptItem] = []
        for idx, ex in enumerate(examples):
            if ex.kind == "text":
                rep.dropped_no_target += 1
                rep.reject(f"{split}: a plain text record has no prompt to answer", ex)
                continue
            turns = prompt_of(ex, data_cfg, labels)
            if not any(m.role == "user" for m in turns):
                rep.dropped_no_target += 1
                rep.reject(f"{split}: no user turn to answer", ex, "messages")
                continue
            if needs_ref and not (ex.answer() or "").strip():
                rep.dropped_no_target += 1
                rep.reject(
                    f"{split}: reward {needs_ref[0]} compares with the reference answer; this has none", ex
                )
                continue
            text = prompt_text(tok, turns, ex.tools)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) + new > data_cfg.max_length:
                rep.dropped_too_long += 1
                rep.reject(
                    f"{split}: prompt of {len(ids)} tokens + objective.max_new_tokens {new} > data.max_length "
                    f"{data_cfg.max_length}",
                    ex,
                )
                continue
            out.append(PromptItem(ids, text, ex, g * (len(ids) + new), idx, len(self.items) + len(out)))
        if examples and not out:
            raise DataError(
                f"objective grpo found no usable prompt in the {split} data ({len(rep.rejects)} dropped; first: "
                f"{rep.rejects[0].reason if rep.rejects else '?'})",
                "give chat or prompt/completion records (the completion is the reference the rewards compare with)",
            )
        self.items.extend(out)
        rep.sequences_out = len(out)
        rep.total_tokens = sum(len(it.prompt_ids) for it in out)
        rep.longest = max((len(it.prompt_ids) for it in out), default=0)
        return out, rep

    def collate(self, items, pad_id: int) -> dict[str, torch.Tensor]:
        """Prompts left-padded for generation, and the items' keys."""
        width = max(len(it.prompt_ids) for it in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, it in enumerate(items):
            n = len(it.prompt_ids)
            ids[r, width - n :] = torch.tensor(it.prompt_ids)
            mask[r, width - n :] = 1
        return {"input_ids": ids, "attention_mask": mask, "item": torch.tensor([it.key for it in items])}

    def norm(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["input_ids"].shape[0] * self.o.num_generations)

    # ------------------------------------------------------------------------------------------ the loop
    def begin_step(self, step: int) -> None:
        self.step, self._micro = step, 0

    def step_stats(self) -> dict[str, float]:
        out, self._generation_s = {"generation_s": round(self._generation_s, 3)}, 0.0
        return out

    def _seed(self) -> int:
        key = f"{self.seed}:{self.step}:{self._micro}:{distributed.current().rank}"
        self._micro += 1
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1)

    @torch.no_grad()
    def _sample(self, model: nn.Module, batch: dict[str, torch.Tensor], greedy: bool) -> list[list[int]]:
        """Each prompt's answers as token ids, ending with the end-of-turn token when the model wrote one."""
        n = 1 if greedy else self.o.num_generations
        was_training = model.training
        model.eval()  # no dropout while sampling: the answers are the policy's own
        options: dict[str, Any] = (
            {"do_sample": False}
            if greedy
            else {
                "do_sample": True,
                "temperature": self.o.temperature,
                "top_p": self.o.top_p,
                "top_k": 0,
            }
        )
        fork = contextlib.nullcontext() if greedy else torch.random.fork_rng(devices=[])
        try:
            with fork:
                if not greedy:
                    torch.manual_seed(self._seed())
                out = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    max_new_tokens=self.o.max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=self.tok.pad_token_id,
                    eos_token_id=self._stops(model),
                    use_cache=True,
                    **options,
                )
        finally:
            if was_training:
                model.train()
        stops = set(self._stops(model))
        answers = []
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            answers.append(row[:end])
        return answers

    def _stops(self, model: nn.Module) -> list[int]:
        ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = ids if isinstance(ids, list) else [ids]
        return sorted({i for i in [*ids, self.tok.eos_token_id] if i is not None})

    def _score(
        self, items: Sequence[PromptItem], answers: list[list[int]], n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total reward per answer, each function's value per answer: answers x functions)."""
        totals, parts = [], []
        for k, ids in enumerate(answers):
            it = items[k // n]
            text = self.tok.decode(ids, skip_special_tokens=True)
            total, each = rewards.score(self.rewards, it.prompt, text, it.example)
            totals.append(total)
            parts.append(each)
        return torch.tensor(totals, dtype=torch.float32), torch.tensor(parts, dtype=torch.float32)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        items = [self.items[k] for k in batch["item"].tolist()]
        g = self.o.num_generations
        t0 = time.time()
        answers = self._sample(model, batch, greedy=False)
        total, parts = self._score(items, answers, g)
        self._generation_s += time.time() - t0
        groups = total.view(len(items), g)
        std = groups.std(dim=1, unbiased=False)
        adv = ((groups - groups.mean(dim=1, keepdim=True)) / (std[:, None] + 1e-4)).reshape(-1)
        live = (std > 1e-6).repeat_interleave(g)  # answers of groups with something to learn from
        stats = {
            "reward_std": float(std.sum()) * g,
            "zero_variance": float((~live).sum()),
            "completion_length": float(sum(len(a) for a in answers)),
            **{f"reward_{r.name}": float(parts[:, j].sum()) for j, r in enumerate(self.rewards)},
        }
        keep = [k for k in range(len(answers)) if live[k] and answers[k]]
        if not keep:  # nothing to learn from in this micro-batch: a zero loss that still joins the graph
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return StepLoss(
                zero, self.norm(batch), float(total.sum()), stats | {"kl": 0.0, "clip_fraction": 0.0}
            )
        rows, sel = self._rows(items, answers, keep, g, batch["input_ids"].device)
        logp, row_of = token_logps(model, rows, sel)
        old = logp.detach()
        ref = None
        if self.o.beta > 0:
            with torch.no_grad(), adapters_off(model):
                ref, _ = token_logps(model, rows, sel)
        a = adv[keep].to(logp.device)[row_of]
        ratio = torch.exp(logp - old)
        clipped = torch.clamp(ratio, 1 - self.o.epsilon, 1 + self.o.epsilon)
        per_token = -torch.min(ratio * a, clipped * a)
        kl = torch.zeros_like(logp)
        if ref is not None:
            d = ref - logp
            kl = torch.exp(d) - d - 1
            per_token = per_token + self.o.beta * kl
        lengths = torch.bincount(row_of, minlength=len(keep)).clamp(min=1).float()
        per_answer = torch.zeros(len(keep), device=logp.device).index_add(0, row_of, per_token) / lengths
        kl_answer = torch.zeros(len(keep), device=logp.device).index_add(0, row_of, kl.detach()) / lengths
        was_clipped = ((ratio < 1 - self.o.epsilon) | (ratio > 1 + self.o.epsilon)).float().detach()
        clip_answer = torch.zeros(len(keep), device=logp.device).index_add(0, row_of, was_clipped) / lengths
        stats |= {"kl": float(kl_answer.sum()), "clip_fraction": float(clip_answer.sum())}
        return StepLoss(per_answer.sum(), self.norm(batch), float(total.sum()), stats)

    def _rows(
        self, items: Sequence[PromptItem], answers: list[list[int]], keep: list[int], g: int, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt + answer per kept answer, right-padded (causal attention needs no mask then), and where the
        answer's tokens are predicted (position t predicts token t + 1)."""
        seqs = [(items[k // g].prompt_ids, answers[k]) for k in keep]
        width = max(len(p) + len(a) for p, a in seqs)
        pad = self.tok.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        sel = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
        for r, (p, a) in enumerate(seqs):
            ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            sel[r, len(p) - 1 : len(p) + len(a) - 1] = True
        return ids.to(device), sel.to(device)

    def validation(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        """Greedy answers, one per prompt; the loss is minus their mean reward."""
        items = [self.items[k] for k in batch["item"].tolist()]
        answers = self._sample(model, batch, greedy=True)
        total, parts = self._score(items, answers, 1)
        stats = {f"reward_{r.name}": float(parts[:, j].sum()) for j, r in enumerate(self.rewards)}
        stats["completion_length"] = float(sum(len(a) for a in answers))
        n = float(len(items))
        return StepLoss(-total.sum(), n, float(total.sum()), stats)


def token_logps(model: nn.Module, ids: torch.Tensor, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each selected next token, the row it belongs to). Logits only where selected: the
    decoder's hidden states there times the head, not the whole (rows x length x vocabulary)."""
    targets = ids[:, 1:][sel]
    row_of = sel.nonzero()[:, 0]
    decoder, head, base = backbone_and_head(model)
    if decoder is not None and isinstance(head, nn.Linear) and head.bias is None:
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state[:, :-1][sel]
        logits = hidden @ head.weight.T
        cap = getattr(base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    else:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1][sel]
    logp = torch.gather(logits.float().log_softmax(-1), 1, targets[:, None]).squeeze(1)
    return logp, row_of
