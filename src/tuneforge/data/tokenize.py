"""Examples → token ids + per-token loss weights, through the model's chat template.

The loss covers exactly the tokens a user means to teach: by default every assistant answer *including the
end-of-turn token that closes it* (if that token is not trained the tuned model never stops; for SmolLM2 it is
also the pad token, which is why weights come from character spans of the rendered conversation and never from
"is this the pad token"). Per-message `weight: 0` is honoured whatever `train_on` says.

Long examples follow `data.truncation`: `raise`, `drop` (rejected with a reason) or `truncate` (cut, kept only
if answer tokens remain). Nothing is dropped or cut without a Reject saying so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.data.schema import Example, Message, Reject
from tuneforge.errors import DataError


@dataclass
class Tokenized:
    input_ids: list[int]
    weights: list[float]  # loss weight of predicting token i (0 for prompt tokens and padding)
    source: Any = None
    index: int = 0  # position of the example in its split
    position_ids: list[int] | None = None  # set on packed rows: positions restart at each example

    @property
    def n_target(self) -> int:
        return sum(1 for w in self.weights if w > 0)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeReport:
    examples_in: int = 0
    sequences_out: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    skipped_undesirable: int = 0
    chunked_texts: int = 0
    target_tokens: int = 0
    total_tokens: int = 0
    longest: int = 0
    rejects: list[Reject] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "rejects"}

    def reject(
        self, reason: str, ex: Example, field: str | None = None, action: str = "dropped", keep: bool = True
    ) -> None:
        """Keep a dropped (or cut, or split) example with its reason; `keep=False` leaves the record out."""
        self.rejects.append(Reject("tokenize", reason, ex.source, field, ex if keep else None, action))


# ----------------------------------------------------------------------------------- example → conversation
def label_set(examples: Sequence[Example]) -> list[str]:
    return sorted({str(e.label) for e in examples if e.kind == "classification" and e.label is not None})


def conversation(ex: Example, cfg: DataConfig, labels: Sequence[str] = ()) -> list[Message]:
    """The chat turns an example is trained and evaluated as (answer included)."""
    if ex.kind == "classification":
        ask = cfg.classification_prompt.format(text=ex.text or "", labels=", ".join(labels))
        turns = [Message("system", cfg.system_prompt)] if cfg.system_prompt else []
        return turns + [Message("user", ask), Message("assistant", str(ex.label))]
    if ex.kind == "preference" and ex.chosen is not None:
        return list(ex.messages) + list(ex.chosen)
    return list(ex.messages)


def prompt_of(ex: Example, cfg: DataConfig, labels: Sequence[str] = ()) -> list[Message]:
    """The turns given to the model when it is asked to answer (everything before the last answer)."""
    conv = conversation(ex, cfg, labels)
    last = max((i for i, m in enumerate(conv) if m.role == "assistant"), default=len(conv))
    return conv[:last]


def template_supports(tok: Any, word: str) -> bool:
    return word in (tok.chat_template or "")


def to_template(
    messages: Sequence[Message], tok: Any, tools: list | None = None
) -> tuple[list[dict], list | None]:
    """Messages as dicts for apply_chat_template. Templates that know nothing of tools get them as text."""
    native_calls = template_supports(tok, "tool_calls")
    out: list[dict] = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            if native_calls:
                d["tool_calls"] = m.tool_calls
            else:
                calls = [
                    {
                        "name": c.get("function", c).get("name"),
                        "arguments": _args(c.get("function", c).get("arguments")),
                    }
                    for c in m.tool_calls
                ]
                text = "\n".join(json.dumps(c, ensure_ascii=False) for c in calls)
                d["content"] = f"{m.content}\n{text}".strip()
        if m.name and m.role == "tool":
            d["name"] = m.name
        out.append(d)
    if tools and not template_supports(tok, "tools"):
        spec = "You can call these functions:\n" + json.dumps(tools, ensure_ascii=False)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{spec}"}
        else:
            out.insert(0, {"role": "system", "content": spec})
        tools = None
    return out, tools


def _args(a: Any) -> Any:
    if isinstance(a, str):
        try:
            return json.loads(a)
        except json.JSONDecodeError:
            return a
    return a


def render(tok: Any, msgs: list[dict], tools: list | None = None, generation_prompt: bool = False) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)


def prompt_text(tok: Any, messages: Sequence[Message], tools: list | None = None) -> str:
    """The rendered prompt that ends with the assistant header, ready for generation."""
    msgs, tools = to_template(messages, tok, tools)
    return render(tok, msgs, tools, generation_prompt=True)


# ------------------------------------------------------------------------------------------- tokenisation
def _turn_weights(msgs: Sequence[Message], train_on: str) -> list[float]:
    """Loss weight per message under the policy; explicit weights (0 or 1 ...) are honoured."""
    assistant = [i for i, m in enumerate(msgs) if m.role == "assistant"]
    last = assistant[-1] if assistant else -1
    out = []
    for i, m in enumerate(msgs):
        if m.weight is not None:  # an explicit weight on a message overrides the policy
            w = float(m.weight)
        elif train_on == "all":
            w = 1.0
        elif m.role != "assistant" or (train_on == "last" and i != last):
            w = 0.0
        else:
            w = 1.0
        out.append(w)
    return out


def _char_spans(
    tok: Any, msgs: list[dict], tools: list | None, weights: list[float]
) -> tuple[str, list[tuple[int, int, float]]]:
    """Render the conversation and find, for each weighted message, the characters of its answer + end-of-turn.

    Relies on the template rendering conversations as prefixes of each other, which every common template
    does; if one does not, the error says so instead of training on the wrong tokens.
    """
    full = render(tok, msgs, tools)
    spans: list[tuple[int, int, float]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or i == 0:
            continue
        before = render(tok, msgs[:i], tools, generation_prompt=True)
        upto = render(tok, msgs[: i + 1], tools)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise DataError(
                "the chat template does not render conversations as prefixes of each other, so answer tokens "
                "cannot be located",
                "set model.chat_template to a template without history rewriting",
            )
        end = len(upto.rstrip())  # train up to and including the end-of-turn marker, not the newline after
        spans.append((len(before), end, weights[i]))
    return full, spans


def tokenize_example(ex: Example, tok: Any, cfg: DataConfig, labels: Sequence[str] = ()) -> list[Tokenized]:
    """One example → one sequence (chat) or several (a long raw text is cut into max_length chunks)."""
    if ex.kind == "text":
        ids = tok(ex.text or "", add_special_tokens=True)["input_ids"]
        if tok.eos_token_id is not None:
            ids = ids + [tok.eos_token_id]
        n = cfg.max_length
        return [
            Tokenized(ids[i : i + n], [1.0] * len(ids[i : i + n]), ex.source) for i in range(0, len(ids), n)
        ]

    messages = conversation(ex, cfg, labels)
    weights = _turn_weights(messages, cfg.train_on)
    msgs, tools = to_template(messages, tok, ex.tools)
    weights = [0.0] * (len(msgs) - len(messages)) + weights  # a tool-spec system turn may have been added
    full, spans = _char_spans(tok, msgs, tools, weights)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    offsets = enc["offset_mapping"]
    if cfg.train_on == "all":
        w = [1.0] * len(ids)
        zero = [(s, e) for s, e, wt in spans if wt == 0]
        w = [
            0.0 if any(a < e and b > s for s, e in zero) else x for (a, b), x in zip(offsets, w, strict=True)
        ]
    else:
        w = [0.0] * len(ids)
        for k, (a, b) in enumerate(offsets):
            for s, e, wt in spans:
                if a < e and b > s:  # token overlaps the answer span
                    w[k] = wt
                    break
    if w:
        w[0] = 0.0  # the first token is never predicted
    return [Tokenized(ids, w, ex.source)]


def _fit_length(
    seq: Tokenized, ex: Example, cfg: DataConfig, rep: TokenizeReport, split: str
) -> Tokenized | None:
    """A sequence longer than data.max_length under data.truncation: dropped (None), cut to length while an answer
    token remains, or kept for `raise` to report; every drop and cut is recorded with its reason."""
    if cfg.truncation == "drop":
        rep.dropped_too_long += 1
        rep.reject(f"{split}: {len(seq)} tokens > data.max_length {cfg.max_length}", ex)
        return None
    if cfg.truncation != "truncate":
        return seq
    kept = sum(1 for w in seq.weights[: cfg.max_length] if w > 0)
    if kept == 0:
        rep.dropped_no_target += 1
        rep.reject(
            f"{split}: truncating {len(seq)} tokens to {cfg.max_length} removes every answer token", ex
        )
        return None
    rep.truncated += 1
    rep.reject(
        f"{split}: cut from {len(seq)} to {cfg.max_length} tokens; {kept} of {seq.n_target} answer tokens kept",
        ex,
        action="truncated",
    )
    return Tokenized(seq.input_ids[: cfg.max_length], seq.weights[: cfg.max_length], seq.source, seq.index)


def tokenize_examples(
    examples: Sequence[Example], tok: Any, cfg: DataConfig, labels: Sequence[str] = (), split: str = "train"
) -> tuple[list[Tokenized], TokenizeReport]:
    rep = TokenizeReport(examples_in=len(examples))
    out: list[Tokenized] = []
    too_long: list[tuple[int, Example]] = []
    for idx, ex in enumerate(examples):
        if ex.kind == "preference" and ex.chosen is None and ex.desirable is False:
            rep.skipped_undesirable += 1
            rep.reject(
                f"{split}: undesirable answer (label false) is not used for supervised training", ex, "label"
            )
            continue
        seqs = tokenize_example(ex, tok, cfg, labels)
        if ex.kind == "text":
            if len(seqs) > 1:
                rep.chunked_texts += 1
                rep.reject(
                    f"{split}: text of {sum(map(len, seqs))} tokens split into {len(seqs)} chunks of at most "
                    f"{cfg.max_length}",
                    ex,
                    "text",
                    action="split",
                    keep=False,
                )
            for s in seqs:
                s.index = idx
            out.extend(seqs)
            continue
        seq = seqs[0]
        seq.index = idx
        if seq.n_target == 0:
            rep.dropped_no_target += 1
            rep.reject(f"{split}: no tokens to train on (every answer has weight 0)", ex, "messages")
            continue
        if len(seq) > cfg.max_length:
            too_long.append((len(seq), ex))
            seq = _fit_length(seq, ex, cfg, rep, split)
        if seq is not None:
            out.append(seq)
    if too_long and cfg.truncation == "raise":
        n, ex = max(too_long, key=lambda t: t[0])
        where = ex.source.where() if ex.source else "?"
        raise DataError(
            f"{len(too_long)} {split} examples are longer than data.max_length={cfg.max_length} tokens "
            f"(longest: {n} at {where})",
            "raise data.max_length, or set data.truncation to drop or truncate",
        )
    rep.sequences_out = len(out)
    rep.target_tokens = sum(s.n_target for s in out)
    rep.total_tokens = sum(len(s) for s in out)
    rep.longest = max((len(s) for s in out), default=0)
    return out, rep


def trained_text_fn(tok: Any, cfg: DataConfig, labels: Sequence[str] = ()):
    """The text an example is trained on: its conversation in the model's chat template (a raw document as is)."""

    def text(ex: Example) -> str:
        if ex.kind == "text":
            return ex.text or ""
        msgs, tools = to_template(conversation(ex, cfg, labels), tok, ex.tools)
        return render(tok, msgs, tools)

    return text


def count_tokens_fn(tok: Any, cfg: DataConfig, labels: Sequence[str] = ()):
    """Token length of an example as it will be trained: for the cleaning length filter and `data inspect`."""
    text = trained_text_fn(tok, cfg, labels)

    def count(ex: Example) -> int:
        # A raw document gets the tokenizer's BOS/EOS; a chat template writes its own special tokens.
        return len(tok(text(ex), add_special_tokens=ex.kind == "text")["input_ids"])

    return count


@dataclass
class Labeled:
    """A text's token ids and the index of its label, for a classification head."""

    input_ids: list[int]
    label: int

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_labeled(
    examples: Sequence[Example], tok: Any, labels: Sequence[str], max_length: int
) -> list[Labeled]:
    """Classification records as token ids (the text's own tokens: no chat template) and label indices. Texts
    longer than max_length are cut, records with a label the head does not know are skipped; both are counted on
    the console."""
    from tuneforge.progress import console

    index = {lab: i for i, lab in enumerate(labels)}
    rows, cut, unknown = [], 0, 0
    for e in examples:
        if str(e.label) not in index:
            unknown += 1
            continue
        ids = tok(e.text or "", truncation=False)["input_ids"]
        if len(ids) > max_length:
            cut += 1
            ids = ids[:max_length]
        rows.append(Labeled(ids, index[str(e.label)]))
    if cut or unknown:
        console.print(
            f"[yellow]{cut} texts cut to {max_length} tokens, {unknown} with a label the classifier does not "
            "know skipped[/]"
        )
    return rows
