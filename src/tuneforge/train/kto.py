"""KTO (Ethayarajh et al. 2024): answers judged one at a time, desirable or not, with no pairs needed.

Each training item is one answer to one prompt with its label (thumbs up / thumbs down): the prompt followed by
the answer, tokenised through the chat template with loss weight on the answer (the last assistant turn and its
end-of-turn token) only. With r = log pi(y|x) - log ref(y|x), the answer's summed log-ratio to the reference
(the same model with its adapters off, as for DPO), the loss follows TRL's KTOTrainer:

    desirable:   w_d * (1 - sigmoid(beta * (r - z0)))
    undesirable: w_u * (1 - sigmoid(beta * (z0 - r)))

z0 estimates KL(pi || ref): the micro-batch's mean log-ratio of *mismatched* answers (each prompt followed by another
item's answer), clamped at 0 and detached, so it sets the reference point without being trained itself. The
mismatched row of every item is fixed when the data is tokenised: its prompt with the answer of the next item of
the split whose prompt differs (TRL shifts answers by one within a batch; fixing the pairing here keeps the
estimate mismatched even when a micro-batch holds one item). Those rows run without gradient.

Preference pairs given to KTO are split into one desirable item (the chosen answer) and one undesirable item
(the rejected answer), as TRL users expect.

Logged, like every stat, per item of the batch: `kl` (z0), `desirable_share` (the desirable items' share),
`desirable_reward` and `undesirable_reward` (beta * r summed over the items of that label: divide by the share
for their mean), and `reward_accuracy` (the items on their label's side of the reference point: r > z0 when
desirable, r < z0 when not, i.e. whose loss is below half its weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuneforge.data.schema import Example, Message
from tuneforge.data.tokenize import Tokenized, TokenizeReport, tokenize_example
from tuneforge.errors import DataError
from tuneforge.models.adapters import adapters_off
from tuneforge.progress import console
from tuneforge.train.objectives import Objective, StepLoss
from tuneforge.train.preference import _weighted, sequence_logps

# The KTO paper's advice on class balance: desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
# in [1, 4/3]. A warning is printed only well outside it (by a fifth), so that a balanced file whose random split
# came out 48/52 says nothing.
BALANCE = (1.0, 4 / 3)
SLACK = 1.2
# How far the mismatched-answer search walks past items that share the prompt before it settles for one.
MAX_WALK = 64


@dataclass
class KTOItem:
    seq: Tokenized  # the prompt + this item's answer, weighted on the answer
    kl: Tokenized  # the prompt + another item's answer (the KL estimate's row), weighted on that answer
    desirable: bool
    prompt_len: int  # tokens before the answer: seq.input_ids[:prompt_len] is the prompt
    source: Any = None
    index: int = 0

    @property
    def n_target(self) -> int:
        return self.seq.n_target

    def __len__(self) -> int:
        return max(len(self.seq), len(self.kl))


def kto_items(ex: Example) -> list[tuple[list[Message], list[Message], bool]] | str:
    """(prompt, answer, desirable) of a record, or why it has none: a pair gives two, a labelled answer one."""
    if ex.is_pair():
        return [
            (list(ex.messages), list(ex.chosen or []), True),
            (list(ex.messages), list(ex.rejected or []), False),
        ]
    if ex.kind != "preference":
        return f"a {ex.kind} record, not an answer labelled desirable or not"
    if ex.chosen or ex.rejected or ex.desirable is None:
        return "no label: give `label: true/false` (or both chosen and rejected)"
    last = max((i for i, m in enumerate(ex.messages) if m.role == "assistant"), default=None)
    if last is None:
        return "no assistant answer to judge"
    return [(ex.messages[:last], ex.messages[last:], bool(ex.desirable))]


def tokenize_kto(
    examples: Sequence[Example],
    tok: Any,
    cfg: Any,
    labels: Sequence[str] = (),
    split: str = "train",
    weights: tuple[float, float] = (1.0, 1.0),
) -> tuple[list[KTOItem], TokenizeReport]:
    """Labelled answers (and pairs, split in two) → KTO items weighted on the answers, each with its KL row."""
    rep = TokenizeReport(examples_in=len(examples))
    if examples and not any(ex.kind == "preference" for ex in examples):
        kinds = sorted({e.kind for e in examples})
        raise DataError(
            f"objective kto needs answers labelled desirable or not, but the {split} data holds "
            f"{' / '.join(kinds)} records",
            "give {messages, label: true/false} or {prompt, completion, label} records (or preference pairs), "
            "or train them with objective: sft",
        )
    # Answers only: the prompt's turns (earlier assistant turns included) carry no loss.
    item_cfg = cfg.model_copy(update={"train_on": "assistant"})
    out: list[KTOItem] = []
    too_long: list[tuple[int, Example]] = []
    unpaired = 0
    for idx, ex in enumerate(examples):
        found = kto_items(ex)
        if isinstance(found, str):
            rep.dropped_no_target += 1
            rep.reject(f"{split}: {found}", ex, "label")
            continue
        unpaired += ex.is_pair()
        for prompt, answer, desirable in found:
            what = "desirable" if desirable else "undesirable"
            if not any((m.content or "").strip() or m.tool_calls for m in answer if m.role == "assistant"):
                rep.dropped_no_target += 1
                rep.reject(f"{split}: the {what} answer is empty", ex)
                continue
            quiet = [Message(m.role, m.content, 0.0, m.tool_calls, m.name, m.tool_call_id) for m in prompt]
            conv = Example("chat", quiet + [_weighted(m) for m in answer], tools=ex.tools, source=ex.source)
            seq = tokenize_example(conv, tok, item_cfg, labels)[0]
            if seq.n_target == 0:
                rep.dropped_no_target += 1
                rep.reject(f"{split}: the {what} answer has no tokens to train on", ex)
                continue
            if len(seq) > cfg.max_length:
                too_long.append((len(seq), ex))
                if cfg.truncation == "raise":
                    continue
                kept = sum(1 for w in seq.weights[: cfg.max_length] if w > 0)
                if cfg.truncation == "drop" or kept == 0:
                    rep.dropped_too_long += 1
                    rep.reject(f"{split}: {what} answer of {len(seq)} tokens > data.max_length", ex)
                    continue
                rep.truncated += 1
                rep.reject(
                    f"{split}: {what} answer cut from {len(seq)} to {cfg.max_length} tokens",
                    ex,
                    action="truncated",
                )
                seq = Tokenized(seq.input_ids[: cfg.max_length], seq.weights[: cfg.max_length], seq.source)
            start = next(i for i, w in enumerate(seq.weights) if w > 0)
            seq.index = idx
            out.append(KTOItem(seq, seq, desirable, start, ex.source, idx))
    if too_long and cfg.truncation == "raise":
        n, ex = max(too_long, key=lambda t: t[0])
        raise DataError(
            f"{len(too_long)} {split} answers are longer than data.max_length={cfg.max_length} tokens "
            f"(longest: {n} at {ex.source.where() if ex.source else '?'})",
            "raise data.max_length, or set data.truncation to drop or truncate",
        )
    _add_kl_rows(out, cfg.max_length)
    rep.sequences_out = len(out)
    rep.target_tokens = sum(it.n_target for it in out)
    rep.total_tokens = sum(len(it.seq) + len(it.kl) for it in out)
    rep.longest = max((len(it) for it in out), default=0)
    if unpaired:
        console.print(
            f"[dim]KTO: {unpaired} {split} preference pairs split into a desirable and an undesirable answer each[/]"
        )
    if split == "train":
        warn_balance(sum(it.desirable for it in out), sum(not it.desirable for it in out), *weights)
    return out, rep


def _add_kl_rows(items: list[KTOItem], max_length: int) -> None:
    """Give each item its mismatched row: its prompt + the answer of the next item whose prompt differs (cut to
    max_length, and with answer tokens left). Where the next MAX_WALK items all share the prompt, another answer
    to the same prompt stands in; a split of one item keeps its own answer."""
    n = len(items)
    prompts = [hash(tuple(it.seq.input_ids[: it.prompt_len])) for it in items]
    for k, it in enumerate(items):
        fallback: Tokenized | None = None
        for step in range(1, min(n, MAX_WALK + 1)):
            j = (k + step) % n
            row = _joined(it, items[j], max_length)
            if row.n_target == 0:
                continue
            if prompts[j] != prompts[k]:
                it.kl = row
                break
            if fallback is None:
                fallback = row
        else:
            it.kl = fallback if fallback is not None else it.seq


def _joined(prompt_of: KTOItem, answer_of: KTOItem, max_length: int) -> Tokenized:
    p, a = prompt_of.prompt_len, answer_of.prompt_len
    ids = prompt_of.seq.input_ids[:p] + answer_of.seq.input_ids[a:]
    weights = [0.0] * p + answer_of.seq.weights[a:]
    return Tokenized(ids[:max_length], weights[:max_length], prompt_of.source, prompt_of.index)


def warn_balance(n_desirable: int, n_undesirable: int, w_d: float, w_u: float) -> str | None:
    """The KTO paper's class-balance advice, printed when the training data is well outside it."""
    msg = None
    if not n_desirable or not n_undesirable:
        if n_desirable or n_undesirable:
            which = "desirable" if n_desirable else "undesirable"
            msg = (
                f"KTO: every training answer is {which}; the loss then only moves them against the KL estimate "
                "(give some answers the other label for a contrast)"
            )
    else:
        ratio = w_d * n_desirable / (w_u * n_undesirable)
        if not BALANCE[0] / SLACK <= ratio <= BALANCE[1] * SLACK:
            lo_d, hi_d = (w_u * n_undesirable / n_desirable * b for b in BALANCE)
            lo_u, hi_u = (w_d * n_desirable / n_undesirable / b for b in reversed(BALANCE))
            msg = (
                f"KTO: {n_desirable} desirable and {n_undesirable} undesirable training answers give "
                f"desirable_weight x {n_desirable} / (undesirable_weight x {n_undesirable}) = {ratio:.2f}; the "
                f"KTO paper recommends 1 to 1.33: set objective.desirable_weight to {lo_d:.2f}-{hi_d:.2f} or "
                f"objective.undesirable_weight to {lo_u:.2f}-{hi_u:.2f} (not both)"
            )
    if msg:
        console.print(f"[yellow]{msg}[/]")
    return msg


def collate_kto(items: Sequence[KTOItem], pad_id: int) -> dict[str, torch.Tensor]:
    """The items' rows (input_ids, weights, attention_mask), their KL rows (kl_*), and `desirable` (0/1)."""
    from tuneforge.data.collate import collate

    batch = collate([it.seq for it in items], pad_id)
    kl = collate([it.kl for it in items], pad_id)
    batch.update({f"kl_{k}": v for k, v in kl.items() if k in ("input_ids", "weights", "attention_mask")})
    batch["desirable"] = torch.tensor([float(it.desirable) for it in items])
    return batch


def kto_losses(
    logratio: torch.Tensor,
    kl_logratio: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    kl_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-item losses, z0) from the items' log-ratios and their mismatched rows' log-ratios (those with
    `kl_valid` False, no answer tokens, are left out of the mean)."""
    if kl_valid is not None:
        kl_logratio = kl_logratio[kl_valid]
    z0 = kl_logratio.mean().clamp(min=0) if kl_logratio.numel() else logratio.new_zeros(())
    z0 = z0.detach()
    good = desirable > 0.5
    losses = torch.where(
        good,
        desirable_weight * (1 - torch.sigmoid(beta * (logratio - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratio))),
    )
    return losses, z0


class KTO(Objective):
    name = "kto"
    accuracy = "reward_accuracy"
    perplexity = False

    def __init__(self, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight

    def tokenize(self, examples, tok, data_cfg, labels, split):
        weights = (self.desirable_weight, self.undesirable_weight)
        return tokenize_kto(examples, tok, data_cfg, labels, split, weights)

    def collate(self, items, pad_id: int) -> dict[str, torch.Tensor]:
        return collate_kto(items, pad_id)

    def norm(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["input_ids"].shape[0])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        rows = {"input_ids": batch["input_ids"], "weights": batch["weights"]}
        kl_rows = {"input_ids": batch["kl_input_ids"], "weights": batch["kl_weights"]}
        logp, _ = sequence_logps(model, rows)
        with torch.no_grad():  # z0 is detached: its rows need no graph
            kl_logp, kl_n = sequence_logps(model, kl_rows)
            with adapters_off(model):
                ref, _ = sequence_logps(model, rows)
                kl_ref, _ = sequence_logps(model, kl_rows)
        logratio = logp - ref
        desirable = batch["desirable"]
        losses, z0 = kto_losses(
            logratio,
            kl_logp - kl_ref,
            desirable,
            self.beta,
            self.desirable_weight,
            self.undesirable_weight,
            kl_n > 0,
        )
        reward = self.beta * logratio.detach()
        good = desirable > 0.5
        # On its label's side of the reference point z0 (the item's loss below half its weight)
        ahead = logratio.detach() - z0
        correct = float(((ahead > 0) & good).sum() + ((ahead < 0) & ~good).sum())
        n = float(losses.shape[0])
        stats = {
            "kl": float(z0) * n,
            "desirable_share": float(good.sum()),
            "desirable_reward": float(reward[good].sum()),
            "undesirable_reward": float(reward[~good].sum()),
        }
        return StepLoss(losses.sum(), n, correct, stats)
