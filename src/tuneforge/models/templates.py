"""Chat templates for base models that have none, and the tokens that end an assistant turn.

A model's own template always wins (and `model.chat_template` in the config overrides it). For base models
without one, tuneforge picks a default that uses tokens the vocabulary already has, so no embedding has to
be added and trained:
- `gemma`:  `<start_of_turn>user ... <end_of_turn>` when the vocabulary has Gemma's turn tokens;
- `chatml`: `<|im_start|>user ... <|im_end|>` when it has ChatML's;
- `plain`:  `### User:` / `### Assistant:` headers, each answer closed by the EOS token.
"""

from __future__ import annotations

from typing import Any

GEMMA = (
    # Gemma's own turn format; like Gemma's instruction-tuned template, a system prompt opens the first user turn.
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] | trim + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PLAIN = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% else %}"
    "{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] + '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


def _has_tokens(tok: Any, *tokens: str) -> bool:
    vocab = tok.get_vocab()
    return all(t in vocab for t in tokens)


def default_for(tok: Any) -> tuple[str, str]:
    """(name, template) of the default template for a tokenizer that has none."""
    if _has_tokens(tok, "<start_of_turn>", "<end_of_turn>"):
        return "default-gemma", GEMMA
    if _has_tokens(tok, "<|im_start|>", "<|im_end|>"):
        return "default-chatml", CHATML
    return "default-plain", PLAIN


def end_of_turn_id(tok: Any) -> int | None:
    """The first token the template writes after an assistant answer — the token the model must learn to emit.

    Found by rendering a tiny conversation, so it works for any template.
    """
    marker = "XQZMARKERQZX"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tok.apply_chat_template(msgs, tokenize=False)
    except Exception:
        return tok.eos_token_id
    tail = text[text.rindex(marker) + len(marker) :]
    ids = tok(tail, add_special_tokens=False)["input_ids"]
    # Skip plain whitespace; the end-of-turn token is the first non-blank one.
    for i in ids:
        if tok.decode([i]).strip():
            return i
    return tok.eos_token_id


def stop_token_ids(tok: Any) -> list[int]:
    ids = []
    for i in (end_of_turn_id(tok), tok.eos_token_id):
        if i is not None and i not in ids:
            ids.append(i)
    return ids
