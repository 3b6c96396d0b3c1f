"""Label masks through SmolLM2's real chat template: what carries loss, and what happens to long examples."""

from __future__ import annotations

import pytest

from tuneforge.config import DataConfig
from tuneforge.data.schema import Example, Message, Source
from tuneforge.data.tokenize import tokenize_examples
from tuneforge.errors import DataError
from tuneforge.models import templates


def _cfg(**kw) -> DataConfig:
    return DataConfig(train="-", **kw)


def _trained(tok, seq) -> str:
    return "".join(tok.decode([i]) for i, w in zip(seq.input_ids, seq.weights, strict=True) if w > 0)


def _chat(*turns, weight_last=None) -> Example:
    msgs = [Message(r, c) for r, c in turns]
    if weight_last is not None:
        msgs[-1].weight = weight_last
    return Example("chat", msgs, source=Source("t.jsonl", 0, 1))


def test_answers_and_end_of_turn_are_trained_even_though_pad_is_eos(smol_tokenizer):
    tok = smol_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # the trap this test guards against
    ex = _chat(
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4")
    )
    (seq,), rep = tokenize_examples([ex], tok, _cfg())
    assert _trained(tok, seq) == "Hello!<|im_end|>4<|im_end|>"
    eot = [i for i, w in zip(seq.input_ids, seq.weights, strict=True) if w > 0 and i == tok.eos_token_id]
    assert len(eot) == 2
    assert rep.target_tokens == seq.n_target
    assert templates.end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")


def test_weight_zero_and_train_on_policies(smol_tokenizer):
    tok = smol_tokenizer
    ex = _chat(("user", "a?"), ("assistant", "first"), ("user", "b?"), ("assistant", "second"))
    ex.messages[1].weight = 0
    (seq,), _ = tokenize_examples([ex], tok, _cfg())
    assert _trained(tok, seq) == "second<|im_end|>"

    ex2 = _chat(("user", "a?"), ("assistant", "first"), ("user", "b?"), ("assistant", "second"))
    (last,), _ = tokenize_examples([ex2], tok, _cfg(train_on="last"))
    assert _trained(tok, last) == "second<|im_end|>"
    (every,), _ = tokenize_examples([ex2], tok, _cfg(train_on="all"))
    assert every.n_target == len(every) - 1  # all but the first token, which nothing predicts
    assert "user" in _trained(tok, every)


def test_all_answers_weight_zero_is_dropped_with_a_reason(smol_tokenizer):
    ex = _chat(("user", "a?"), ("assistant", "no"), weight_last=0)
    seqs, rep = tokenize_examples([ex], smol_tokenizer, _cfg())
    assert seqs == [] and rep.dropped_no_target == 1
    assert "no tokens to train on" in rep.rejects[0].reason and rep.rejects[0].source.line == 1


def _long_example(words: int) -> Example:
    return _chat(("user", " ".join(["word"] * words)), ("assistant", "short answer"))


def test_truncation_policies_count_and_keep_every_record(smol_tokenizer):
    tok = smol_tokenizer
    data = [_long_example(5), _long_example(200)]
    with pytest.raises(DataError, match=r"1 train examples are longer than data.max_length=64 .*t.jsonl:1"):
        tokenize_examples(data, tok, _cfg(max_length=64, truncation="raise"))

    seqs, rep = tokenize_examples(data, tok, _cfg(max_length=64, truncation="drop"))
    assert len(seqs) == 1 and rep.dropped_too_long == 1
    assert rep.rejects[0].action == "dropped" and "> data.max_length 64" in rep.rejects[0].reason

    # cutting a long prompt removes its answer, so it is dropped rather than trained on nothing
    seqs, rep = tokenize_examples(data, tok, _cfg(max_length=64, truncation="truncate"))
    assert (
        len(seqs) == 1
        and rep.dropped_no_target == 1
        and "removes every answer token" in rep.rejects[0].reason
    )

    long_answer = _chat(("user", "Tell me"), ("assistant", " ".join(["yes"] * 200)))
    seqs, rep = tokenize_examples([long_answer], tok, _cfg(max_length=64, truncation="truncate"))
    assert len(seqs[0]) == 64 and rep.truncated == 1 and rep.rejects[0].action == "truncated"


def test_classification_is_asked_with_its_labels(smol_tokenizer):
    ex = Example("classification", text="The screen cracked on day one.", label="negative")
    (seq,), _ = tokenize_examples([ex], smol_tokenizer, _cfg(), labels=["negative", "neutral", "positive"])
    text = smol_tokenizer.decode(seq.input_ids)
    assert "Answer with one of: negative, neutral, positive." in text
    assert _trained(smol_tokenizer, seq) == "negative<|im_end|>"


def test_raw_text_is_chunked_not_cut(smol_tokenizer):
    ex = Example("text", text=" ".join(["lorem ipsum"] * 200), source=Source("c4.jsonl", 0, 1))
    seqs, rep = tokenize_examples([ex], smol_tokenizer, _cfg(max_length=64))
    assert len(seqs) > 1 and all(len(s) <= 64 for s in seqs)
    assert rep.chunked_texts == 1 and rep.rejects[0].action == "split"
    assert sum(len(s) for s in seqs) == len(smol_tokenizer(ex.text)["input_ids"]) + 1  # + EOS


def test_tool_calls_become_text_for_templates_without_tool_support(smol_tokenizer):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    ex = Example(
        "chat",
        [
            Message("user", "Weather in Oslo?"),
            Message("assistant", "", tool_calls=[call]),
            Message("tool", '{"temp": 3}', name="get_weather"),
            Message("assistant", "It is 3 degrees."),
        ],
        tools=[{"name": "get_weather", "parameters": {"type": "object"}}],
    )
    (seq,), _ = tokenize_examples([ex], smol_tokenizer, _cfg())
    text = smol_tokenizer.decode(seq.input_ids)
    assert "You can call these functions" in text  # tools offered in the system turn
    trained = _trained(smol_tokenizer, seq)
    assert '"name": "get_weather"' in trained and "It is 3 degrees." in trained


def test_default_template_for_base_models(smol_tokenizer):
    name, tmpl = templates.default_for(smol_tokenizer)  # has ChatML tokens
    assert name == "default-chatml" and "<|im_start|>" in tmpl
