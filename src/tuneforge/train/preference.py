"""Preference tuning: DPO and ORPO, written from their papers' formulas.

Each training item is a pair: the prompt followed by the chosen answer, and the prompt followed by the rejected
one, tokenised through the chat template with loss weight on the answer (and its end-of-turn token) only. A
batch holds the chosen rows first and the rejected rows after them, so one forward pass scores both.

- DPO (Rafailov et al. 2023): loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))]),
  with log pi the summed log-probability of an answer. The reference is the same model with its adapters
  switched off (peft's `disable_adapter()`), so no second copy of the model is ever held.
- ORPO (Hong et al. 2024): loss = NLL(c) - lambda * log sigmoid(log odds(c) - log odds(r)), with
  odds(y) = p / (1 - p) of the length-normalised probability p = exp(mean log-prob). No reference model.

Logged per pair: the loss, `reward_accuracy` (the chosen answer wins), `reward_margin` (DPO: beta times the
log-ratio gap; ORPO: the log-odds gap) and the chosen and rejected rewards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.data.schema import Example, Message
from tuneforge.data.tokenize import Tokenized, TokenizeReport, tokenize_example
from tuneforge.errors import DataError
from tuneforge.models.adapters import adapters_off
from tuneforge.ops.fused_ce import fused_linear_cross_entropy
from tuneforge.ops.lm_loss import backbone_and_head
from tuneforge.train.objectives import Objective, StepLoss


@dataclass
class Pair:
    chosen: Tokenized
    rejected: Tokenized
    source: Any = None
    index: int = 0

    @property
    def n_target(self) -> int:
        return self.chosen.n_target + self.rejected.n_target

    def __len__(self) -> int:
        return max(len(self.chosen), len(self.rejected))


def tokenize_pairs(
    examples: Sequence[Example], tok: Any, cfg: Any, labels: Sequence[str] = (), split: str = "train"
) -> tuple[list[Pair], TokenizeReport]:
    """Pairs → (prompt + chosen, prompt + rejected) sequences weighted on the answers only."""
    rep = TokenizeReport(examples_in=len(examples))
    unpaired = [e for e in examples if not e.is_pair()]
    if unpaired and len(unpaired) == len(examples):
        kinds = sorted(
            {e.kind if e.kind != "preference" else "unpaired feedback (label true/false)" for e in examples}
        )
        raise DataError(
            f"preference objectives need pairs (prompt, chosen, rejected), but the {split} data holds "
            f"{' / '.join(kinds)} records",
            "give prompt/chosen/rejected records (or OpenAI's input/preferred_output/non_preferred_output), or "
            "train them with objective: sft",
        )
    # Answers only: the prompt's turns (earlier assistant turns included) carry no loss.
    pair_cfg = cfg.model_copy(update={"train_on": "assistant"})
    out: list[Pair] = []
    for idx, ex in enumerate(examples):
        if not ex.is_pair():
            rep.dropped_no_target += 1
            rep.reject(f"{split}: not a preference pair", ex)
            continue
        prompt = [Message(m.role, m.content, 0.0, m.tool_calls, m.name, m.tool_call_id) for m in ex.messages]
        seqs = []
        for answer in (ex.chosen, ex.rejected):
            conv = Example("chat", prompt + [_weighted(m) for m in answer], tools=ex.tools, source=ex.source)
            seqs.append(tokenize_example(conv, tok, pair_cfg, labels)[0])
        pair = Pair(seqs[0], seqs[1], ex.source, idx)
        if pair.chosen.n_target == 0 or pair.rejected.n_target == 0:
            rep.dropped_no_target += 1
            rep.reject(f"{split}: an answer of the pair is empty", ex)
            continue
        if len(pair) > cfg.max_length:
            if cfg.truncation == "raise":
                raise DataError(
                    f"a {split} pair is {len(pair)} tokens, longer than data.max_length={cfg.max_length} "
                    f"({ex.source.where() if ex.source else '?'})",
                    "raise data.max_length, or set data.truncation to drop or truncate",
                )
            cut = [
                Tokenized(s.input_ids[: cfg.max_length], s.weights[: cfg.max_length], s.source) for s in seqs
            ]
            if cfg.truncation == "drop" or min(s.n_target for s in cut) == 0:
                rep.dropped_too_long += 1
                rep.reject(f"{split}: pair of {len(pair)} tokens > data.max_length", ex)
                continue
            rep.truncated += 1
            rep.reject(f"{split}: pair cut to {cfg.max_length} tokens", ex, action="truncated")
            pair = Pair(cut[0], cut[1], ex.source, idx)
        out.append(pair)
    rep.sequences_out = len(out)
    rep.target_tokens = sum(p.n_target for p in out)
    rep.total_tokens = sum(len(p.chosen) + len(p.rejected) for p in out)
    rep.longest = max((len(p) for p in out), default=0)
    return out, rep


def _weighted(m: Message) -> Message:
    return Message(
        m.role, m.content, 1.0 if m.role == "assistant" else 0.0, m.tool_calls, m.name, m.tool_call_id
    )


def collate_pairs(items: Sequence[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then the rejected rows in the same order; right-padded to one length."""
    from tuneforge.data.collate import collate

    return collate([p.chosen for p in items] + [p.rejected for p in items], pad_id)


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's weighted tokens, their count), each of shape (rows,).

    Uses the fused LM head + cross-entropy row by row, so no (tokens x vocabulary) logits tensor is kept.
    """
    input_ids = batch["input_ids"]
    sel = batch["weights"][:, 1:] > 0
    targets = input_ids[:, 1:]
    counts = sel.sum(1).float()
    decoder, head, base = backbone_and_head(model)
    if decoder is not None and isinstance(head, nn.Linear) and head.bias is None:
        hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        cap = getattr(base.config, "final_logit_softcapping", None)
        rows = []
        for r in range(input_ids.shape[0]):
            t = targets[r][sel[r]]
            nll, _ = fused_linear_cross_entropy(
                hidden[r][sel[r]], head.weight, t, torch.ones_like(t, dtype=torch.float32), cap
            )
            rows.append(-nll)
        return torch.stack(rows).float(), counts
    logits = model(input_ids=input_ids, use_cache=False).logits[:, -input_ids.shape[1] :][:, :-1].float()
    logp = torch.gather(logits.log_softmax(-1), 2, targets[..., None]).squeeze(-1)
    return (logp * sel).sum(1), counts


class _Preference(Objective):
    accuracy = "reward_accuracy"
    pairs = True
    perplexity = False

    def __init__(self, beta: float):
        self.beta = beta

    def tokenize(self, examples, tok, data_cfg, labels, split):
        return tokenize_pairs(examples, tok, data_cfg, labels, split)

    def collate(self, items, pad_id: int) -> dict[str, torch.Tensor]:
        return collate_pairs(items, pad_id)

    def norm(self, batch: dict[str, torch.Tensor]) -> float:
        return batch["input_ids"].shape[0] / 2

    def _finish(self, losses, chosen_r, rejected_r, extra: dict[str, float] | None = None) -> StepLoss:
        margin = (chosen_r - rejected_r).detach()
        stats = {
            "reward_margin": float(margin.sum()),
            "chosen_reward": float(chosen_r.detach().sum()),
            "rejected_reward": float(rejected_r.detach().sum()),
            **(extra or {}),
        }
        return StepLoss(losses.sum(), float(losses.shape[0]), float((margin > 0).sum()), stats)


class DPO(_Preference):
    name = "dpo"

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        n = batch["input_ids"].shape[0] // 2
        logp, _ = sequence_logps(model, batch)
        with torch.no_grad(), adapters_off(model):
            ref, _ = sequence_logps(model, batch)
        chosen_r = self.beta * (logp[:n] - ref[:n])
        rejected_r = self.beta * (logp[n:] - ref[n:])
        return self._finish(-F.logsigmoid(chosen_r - rejected_r), chosen_r, rejected_r)


class ORPO(_Preference):
    name = "orpo"

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        n = batch["input_ids"].shape[0] // 2
        logp, counts = sequence_logps(model, batch)
        mean = logp / counts.clamp(min=1)  # length-normalised log-probability, < 0

        def log_odds(x: torch.Tensor) -> torch.Tensor:  # log(p / (1 - p)) for p = exp(x)
            return x - torch.log1p(-torch.exp(x).clamp(max=1 - 1e-6))

        ratio = log_odds(mean[:n]) - log_odds(mean[n:])
        nll = -mean[:n]
        losses = nll - self.beta * F.logsigmoid(ratio)
        return self._finish(
            losses, log_odds(mean[:n]), log_odds(mean[n:]), {"nll_chosen": float(nll.detach().sum())}
        )
