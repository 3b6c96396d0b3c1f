"""Reading files, detecting formats, normalising rows, and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data.formats import load_file, normalise_row
from tuneforge.data.schema import Message
from tuneforge.errors import DataError

from .helpers import FILE_TYPES, write

# The same records in each format; every file type must load them identically.
RECORDS = {
    "chat": [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris", "weight": 1},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "weight": 0},
            ]
        },
    ],
    "sharegpt": [
        {
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
            "system": "Kind.",
        },
        {
            "conversations": [{"from": "human", "value": "Bye"}, {"from": "gpt", "value": "See you"}],
            "system": "Kind.",
        },
    ],
    "alpaca": [
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        {"instruction": "Translate to French", "input": "dog", "output": "chien"},
    ],
    "prompt_completion": [
        {"prompt": "The sky is", "completion": " blue"},
        {"prompt": "Grass is", "completion": " green"},
    ],
    "text": [{"text": "A document about cats.\nSecond line."}, {"text": "Another document."}],
    "classification": [{"text": "I loved it", "label": "positive"}, {"text": "Awful", "label": "negative"}],
    "preference": [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."},
        {"prompt": "Say bye", "chosen": "Bye!", "rejected": "Whatever."},
    ],
    "preference_lists": [
        {
            "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        },
        {
            "prompt": [{"role": "user", "content": "Q2"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        },
    ],
    "sharegpt_pair": [
        {
            "conversations": [{"from": "human", "value": "Q1"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        },
        {
            "conversations": [{"from": "human", "value": "Q2"}],
            "chosen": {"from": "gpt", "value": "yes"},
            "rejected": {"from": "gpt", "value": "no"},
        },
    ],
    "openai_dpo": [
        {
            "input": {"messages": [{"role": "user", "content": "Q1"}]},
            "preferred_output": [{"role": "assistant", "content": "good"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}],
        },
        {
            "input": {"messages": [{"role": "user", "content": "Q2"}]},
            "preferred_output": [{"role": "assistant", "content": "yes"}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        },
    ],
    "kto": [
        {
            "messages": [
                {"role": "user", "content": "Joke?"},
                {"role": "assistant", "content": "Knock knock"},
            ],
            "label": True,
        },
        {
            "messages": [{"role": "user", "content": "Joke?"}, {"role": "assistant", "content": "No."}],
            "label": False,
        },
    ],
}
FORMAT_OF = {
    "kto": "preference",
    "preference_lists": "preference",
    "sharegpt_pair": "preference",
    "openai_dpo": "preference",
}


def _content(examples):
    return [{k: v for k, v in ex.to_dict().items() if k != "source"} for ex in examples]


@pytest.mark.parametrize("fmt", list(RECORDS))
@pytest.mark.parametrize("file_type", FILE_TYPES)
def test_every_file_type_loads_the_same_examples(tmp_path, fmt, file_type):
    base = load_file(write(tmp_path / "base.jsonl", RECORDS[fmt]))
    res = load_file(write(tmp_path / f"data.{file_type}", RECORDS[fmt]))
    assert res.format == base.format == FORMAT_OF.get(fmt, fmt)
    assert res.rejects == [] and res.n_rows == 2
    assert _content(res.examples) == _content(base.examples)
    assert [ex.source.index for ex in res.examples] == [0, 1]


def test_normalised_shapes():
    chat = normalise_row(RECORDS["chat"][0])
    assert chat.kind == "chat" and [m.role for m in chat.messages] == ["system", "user", "assistant"]
    assert chat.messages[2].weight == 1.0
    share = normalise_row(RECORDS["sharegpt"][0])
    assert [(m.role, m.content) for m in share.messages] == [
        ("system", "Kind."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
    ]
    alp = normalise_row(RECORDS["alpaca"][0])
    assert [(m.role, m.content) for m in alp.messages] == [
        ("user", "Translate to French\ncat"),
        ("assistant", "chat"),
    ]
    pc = normalise_row(RECORDS["prompt_completion"][0])
    assert [(m.role, m.content) for m in pc.messages] == [("user", "The sky is"), ("assistant", " blue")]
    assert normalise_row(RECORDS["text"][0]).kind == "text"
    cls = normalise_row(RECORDS["classification"][0])
    assert (cls.kind, cls.text, cls.label) == ("classification", "I loved it", "positive")
    pref = normalise_row(RECORDS["preference"][0])
    assert pref.messages == [Message("user", "Say hi")]
    assert pref.chosen == [Message("assistant", "Hi!")] and pref.rejected == [
        Message("assistant", "Go away.")
    ]
    kto = normalise_row(RECORDS["kto"][1])
    assert (kto.kind, kto.desirable, kto.chosen, len(kto.messages)) == ("preference", False, None, 2)


# ---------------------------------------------------------------------------------------------- readers
def test_jsonl_bad_lines_become_rejects_with_line_numbers(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "one"}\n\n{"text": "two"\n[1, 2]\n{"text": "three"}\n')
    res = load_file(p)
    assert [ex.text for ex in res.examples] == ["one", "three"]
    assert [ex.source.line for ex in res.examples] == [1, 5]
    assert res.n_rows == 4  # the blank line is not a record
    assert [(r.stage, r.source.line) for r in res.rejects] == [("read", 3), ("read", 4)]
    assert res.rejects[0].reason.startswith("not valid JSON")
    assert res.rejects[1].reason == "not a JSON object: the record is a list"
    assert res.rejects[0].record == '{"text": "two"'


def test_json_array_records_know_their_lines(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n  {"text": "a"},\n\n  {"text":\n     "b"},\n  {"text": "c"}\n]\n')
    assert [ex.source.line for ex in load_file(p).examples] == [2, 4, 6]


def test_json_object_holding_one_list(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"version": 2, "data": RECORDS["alpaca"]}))
    res = load_file(p)
    assert res.format == "alpaca" and len(res.examples) == 2


def test_json_file_that_is_json_lines(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"text": "a"}\n{"text": "b"}\nnot json\n')
    res = load_file(p)
    assert [ex.text for ex in res.examples] == ["a", "b"]
    assert res.rejects[0].source.line == 3


def test_jsonl_file_that_is_a_json_array(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(RECORDS["text"], indent=2))
    assert [ex.text for ex in load_file(p).examples] == [
        "A document about cats.\nSecond line.",
        "Another document.",
    ]


def test_csv_lines_multiline_cells_and_empty_cells(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('instruction,input,output\nSay hi,,Hi\n"Write\ntwo lines",x,"a\nb"\n\nCount,,"1 2 3"\n')
    res = load_file(p)
    assert [ex.source.line for ex in res.examples] == [2, 3, 7]  # the quoted cells span lines 3-5
    assert res.examples[1].messages[0].content == "Write\ntwo lines\nx"
    assert res.examples[0].meta == {"missing": ["input"]}  # an empty cell is a missing value
    assert res.examples[1].meta == {}


def test_csv_row_with_too_many_cells_is_rejected(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nfine,pos\nbroken, with comma,neg\n")
    res = load_file(p)
    assert len(res.examples) == 1
    assert res.rejects[0].source.line == 3 and "wrong number of cells" in res.rejects[0].reason


def test_tsv_and_semicolon_csv(tmp_path):
    (tmp_path / "d.tsv").write_text("text\tlabel\nhello, world\tpos\n")
    (tmp_path / "e.csv").write_text("text;label\nhello, world;pos\n")
    for name in ("d.tsv", "e.csv"):
        ex = load_file(tmp_path / name).examples[0]
        assert (ex.text, ex.label) == ("hello, world", "pos")


def test_xml_nested_messages_attributes_and_lines(tmp_path):
    p = tmp_path / "d.xml"
    p.write_text(
        '<?xml version="1.0"?>\n<data>\n'
        '  <example id="1">\n    <messages>\n      <message role="user">Hi &amp; welcome</message>\n'
        '      <message role="assistant" weight="0">Hello</message>\n    </messages>\n  </example>\n'
        "  <!-- a comment is not a record -->\n"
        '  <example><messages><message role="user">Q</message><message role="assistant">A</message>'
        "</messages></example>\n</data>\n"
    )
    res = load_file(p)
    assert res.format == "chat" and len(res.examples) == 2
    assert [(m.role, m.content, m.weight) for m in res.examples[0].messages] == [
        ("user", "Hi & welcome", None),
        ("assistant", "Hello", 0.0),
    ]
    assert [ex.source.line for ex in res.examples] == [3, 10]


def test_xml_child_elements_as_fields(tmp_path):
    p = tmp_path / "d.xml"
    p.write_text(
        "<rows><row><instruction>Add</instruction><input>1 2</input><output>3</output></row>"
        "<row><instruction>Sub</instruction><input/><output>0</output>"
        "<history><pair><item>q</item><item>a</item></pair></history></row></rows>"
    )
    res = load_file(p)
    assert res.format == "alpaca"
    assert [m.content for m in res.examples[1].messages] == ["q", "a", "Sub", "0"]


def test_parquet_nested_messages(tmp_path):
    ex = load_file(write(tmp_path / "d.parquet", RECORDS["chat"])).examples
    assert ex[0].messages[2] == Message("assistant", "Paris", weight=1.0)
    assert ex[0].source.line is None and ex[0].source.where().endswith("d.parquet record 1")


# -------------------------------------------------------------------------------------- chat details
def test_typed_content_parts_and_loss_weight(tmp_file):
    p = tmp_file(
        "d.jsonl",
        [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "Look "}, {"type": "text", "text": "here"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "value": "Done"}], "loss_weight": 1.0},
                ]
            },
        ],
    )
    msgs = load_file(p).examples[0].messages
    assert [(m.content, m.weight) for m in msgs] == [("Look here", None), ("Done", 1.0)]


def test_tools_tool_calls_and_tool_role():
    ex = normalise_row(
        {
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": {"city": "Oslo"}},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "-3C"},
                {"role": "assistant", "content": "It is -3C."},
            ],
        }
    )
    call = ex.messages[1]
    assert call.content == "" and call.tool_calls[0]["id"] == "c1"
    assert json.loads(call.tool_calls[0]["function"]["arguments"]) == {
        "city": "Oslo"
    }  # arguments as JSON text
    assert (ex.messages[2].role, ex.messages[2].tool_call_id) == ("tool", "c1")
    assert ex.tools[0]["function"]["name"] == "weather"


def test_sharegpt_function_call_observation_and_tools_as_json_text():
    ex = normalise_row(
        {
            "conversations": [
                {"from": "human", "value": "Convert 10 USD"},
                {"from": "function_call", "value": '{"name": "convert", "arguments": {"amount": 10}}'},
                {"from": "observation", "value": '{"eur": 9.2}'},
                {"from": "gpt", "value": "9.2 EUR"},
            ],
            "tools": '[{"name": "convert", "description": "currency", "parameters": {}}]',
        }
    )
    assert [m.role for m in ex.messages] == ["user", "assistant", "tool", "assistant"]
    assert ex.messages[1].tool_calls[0]["function"]["name"] == "convert"
    assert ex.messages[2].name == "convert"
    assert ex.tools == [
        {"type": "function", "function": {"name": "convert", "description": "currency", "parameters": {}}}
    ]


@pytest.mark.parametrize("file_type", ["jsonl", "csv", "xml"])
def test_text_that_looks_like_json_stays_text(tmp_path, file_type):
    rows = [
        {"prompt": "[INST] Extract the city [/INST]", "completion": '{"city": "Oslo"}'},
        {"prompt": "List", "completion": '[{"id": 1}]'},
    ]
    ex = load_file(write(tmp_path / f"d.{file_type}", rows)).examples
    assert [m.content for m in ex[0].messages] == ["[INST] Extract the city [/INST]", '{"city": "Oslo"}']
    assert ex[1].messages[1].content == '[{"id": 1}]'


def test_alpaca_system_and_history():
    ex = normalise_row(
        {
            "instruction": "And 3+3?",
            "input": "",
            "output": "6",
            "system": "Math tutor.",
            "history": [["1+1?", "2"], ["2+2?", "4"]],
        }
    )
    assert [(m.role, m.content) for m in ex.messages] == [
        ("system", "Math tutor."),
        ("user", "1+1?"),
        ("assistant", "2"),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
        ("assistant", "6"),
    ]


# --------------------------------------------------------------------------------- preference shapes
def test_preference_with_message_lists():
    ex = normalise_row(
        {
            "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
    )
    assert [m.role for m in ex.messages] == ["system", "user"] and ex.chosen[0].content == "good"


def test_openai_dpo_shape():
    ex = normalise_row(
        {
            "input": {
                "messages": [{"role": "user", "content": "Hello"}],
                "tools": [],
                "parallel_tool_calls": True,
            },
            "preferred_output": [{"role": "assistant", "content": "Hi there!"}],
            "non_preferred_output": [{"role": "assistant", "content": "What?"}],
        }
    )
    assert (ex.kind, ex.messages[0].content, ex.chosen[0].content, ex.rejected[0].content) == (
        "preference",
        "Hello",
        "Hi there!",
        "What?",
    )


def test_sharegpt_with_chosen_and_rejected_messages():
    ex = normalise_row(
        {
            "conversations": [{"from": "human", "value": "Q"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        }
    )
    assert ex.messages == [Message("user", "Q")]
    assert ex.chosen == [Message("assistant", "good")] and ex.rejected == [Message("assistant", "bad")]


def test_chosen_messages_split_on_shared_prefix():
    shared = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    ex = normalise_row(
        {
            "chosen_messages": shared + [{"role": "assistant", "content": "good"}],
            "rejected_messages": shared + [{"role": "assistant", "content": "bad"}],
        }
    )
    assert [m.content for m in ex.messages] == ["Q1", "A1", "Q2"]
    assert ex.chosen[0].content == "good" and ex.rejected[0].content == "bad"


def test_kto_label_strings(tmp_path):
    rows = [{"messages": RECORDS["kto"][0]["messages"], "label": v} for v in ("true", "False", "1", "0")]
    res = load_file(write(tmp_path / "k.csv", rows))
    assert res.format == "preference" and [ex.desirable for ex in res.examples] == [True, False, True, False]


def test_chat_with_a_category_label_is_not_kto(tmp_file):
    rows = [{"messages": RECORDS["chat"][1]["messages"], "label": "billing"}] * 2
    res = load_file(tmp_file("d.jsonl", rows))
    assert res.format == "chat" and {ex.kind for ex in res.examples} == {"chat"}


# ---------------------------------------------------------------------------- override, columns, prompt
def test_forced_format_overrides_detection(tmp_file):
    p = tmp_file("d.jsonl", RECORDS["classification"])
    assert load_file(p).format == "classification"
    res = load_file(p, format="text")
    assert res.format == "text" and [ex.kind for ex in res.examples] == ["text", "text"]


def test_forced_chat_accepts_sharegpt_conversations(tmp_file):
    res = load_file(tmp_file("d.jsonl", RECORDS["sharegpt"]), format="chat")
    assert res.format == "chat" and res.examples[0].messages[1].content == "Hi"


@pytest.mark.parametrize(
    ("records", "columns", "fmt"),
    [
        (
            [{"review": "Great", "sentiment": 1}, {"review": "Bad", "sentiment": 0}],
            {"text": "review", "label": "sentiment"},
            "classification",
        ),
        (
            [{"question": "Q?", "answer": "A"}],
            {"prompt": "question", "completion": "answer"},
            "prompt_completion",
        ),
        ([{"dialog": RECORDS["chat"][1]["messages"]}], {"messages": "dialog"}, "chat"),
        (
            [{"prompt": "a", "completion": "b"}],
            {"prompt": "completion", "completion": "prompt"},
            "prompt_completion",
        ),
    ],
)
def test_columns_map_our_fields_to_yours(tmp_file, records, columns, fmt):
    res = load_file(tmp_file("d.jsonl", records), columns=columns)
    assert res.format == fmt and len(res.examples) == len(records) and res.columns == columns


def test_swapped_columns_swap_values(tmp_file):
    res = load_file(
        tmp_file("d.jsonl", [{"prompt": "a", "completion": "b"}]),
        columns={"prompt": "completion", "completion": "prompt"},
    )
    assert [m.content for m in res.examples[0].messages] == ["b", "a"]


def test_classification_labels_are_stringified(tmp_file):
    res = load_file(
        tmp_file(
            "d.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0.0}, {"text": "c", "label": True}]
        )
    )
    assert [ex.label for ex in res.examples] == ["1", "0", "true"]


def test_common_column_names_are_recognised(tmp_file):
    res = load_file(
        tmp_file("d.jsonl", [{"sentence": "ok", "label": "pos"}, {"sentence": "no", "label": "neg"}])
    )
    assert res.format == "classification" and res.columns == {"text": "sentence"}
    res = load_file(tmp_file("e.jsonl", [{"text": "ok", "category": "billing"}]))
    assert res.format == "classification" and res.examples[0].label == "billing"
    res = load_file(tmp_file("f.jsonl", [{"question": "Why?", "answer": "Because."}]))
    assert res.format == "prompt_completion"


def test_system_prompt_added_where_missing(tmp_file):
    res = load_file(tmp_file("d.jsonl", RECORDS["chat"]), system_prompt="You are helpful.")
    assert [m.content for m in res.examples[0].messages if m.role == "system"] == ["Be brief."]
    assert res.examples[1].messages[0] == Message("system", "You are helpful.")
    pref = load_file(tmp_file("p.jsonl", RECORDS["preference"]), system_prompt="Be nice.").examples[0]
    assert pref.messages[0] == Message("system", "Be nice.") and pref.chosen[0].role == "assistant"
    cls = load_file(tmp_file("c.jsonl", RECORDS["classification"]), system_prompt="x").examples[0]
    assert cls.messages == []


# ------------------------------------------------------------------------------------- row rejects
def test_rows_that_cannot_be_normalised_are_rejected_not_raised(tmp_file):
    p = tmp_file(
        "d.jsonl",
        [
            {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},
            {"messages": "not a list"},
            {"messages": [{"content": "no role"}]},
            {"messages": [{"role": "user", "content": {"type": "image_url", "image_url": "x.png"}}]},
            {"messages": [{"role": "assistant", "content": 5, "weight": "heavy"}]},
            {"messages": None},
        ],
    )
    res = load_file(p)
    assert len(res.examples) == 1 and res.n_rows == 6
    got = [(r.stage, r.source.line, r.field, r.reason) for r in res.rejects]
    assert got == [
        ("normalise", 2, "messages", "wrong type: messages must be a list of messages, not text"),
        ("normalise", 3, "messages[0].role", "missing field: messages[0] has no role"),
        (
            "normalise",
            4,
            "messages[0].content[0]",
            "unsupported content: a image_url part (tuneforge trains on text only)",
        ),
        ("normalise", 5, "messages[0].weight", "wrong type: messages[0].weight must be a number, not text"),
        ("normalise", 6, "messages", "missing field: messages"),
    ]
    assert res.rejects[0].record == {"messages": "not a list"}


def test_missing_required_fields_are_rejected(tmp_file):
    res = load_file(
        tmp_file(
            "d.jsonl",
            [
                {"instruction": "a", "input": "", "output": "b"},
                {"instruction": "a", "input": ""},
                {"instruction": None, "output": "b"},
                {"instruction": ["x"], "output": "b"},
            ],
        )
    )
    assert res.format == "alpaca" and len(res.examples) == 1
    assert [(r.field, r.reason) for r in res.rejects] == [
        ("output", "missing field: output"),
        ("instruction", "missing field: instruction"),
        ("instruction", "wrong type: instruction must be text, not a list"),
    ]


def test_classification_row_without_label_is_rejected(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\ngood,pos\nno label here,\nbad,neg\n")
    res = load_file(p)
    assert len(res.examples) == 2
    assert [(r.source.line, r.field, r.reason) for r in res.rejects] == [(3, "label", "missing field: label")]


def test_identical_preference_pair_is_rejected():
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(DataError, match="no differing reply"):
        normalise_row({"chosen_messages": msgs, "rejected_messages": msgs})


# ------------------------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data file .*nope\.jsonl does not exist — check the path"):
        load_file(tmp_path / "nope.jsonl")


def test_directory(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a data file"):
        load_file(tmp_path)


def test_unknown_extension(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(DataError, match=r"unknown format \.txt — use JSONL, JSON, CSV, Parquet or XML"):
        load_file(p)


@pytest.mark.parametrize("name", ["e.jsonl", "e.json", "e.csv", "e.xml", "e.parquet"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_file(tmp_path / name)


def test_whitespace_only_and_header_only_files(tmp_path):
    (tmp_path / "w.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match="is empty"):
        load_file(tmp_path / "w.jsonl")
    (tmp_path / "h.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="only a header row"):
        load_file(tmp_path / "h.csv")
    (tmp_path / "a.json").write_text("[]")
    with pytest.raises(DataError, match="holds no records"):
        load_file(tmp_path / "a.json")


def test_invalid_json_and_xml(tmp_path):
    (tmp_path / "bad.json").write_text('[{"text": "a"},\n {"text": }]')
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON: Expecting value at line 2"):
        load_file(tmp_path / "bad.json")
    (tmp_path / "bad.xml").write_text("<data><row><text>a</row></data>")
    with pytest.raises(DataError, match=r"bad\.xml is not valid XML"):
        load_file(tmp_path / "bad.xml")
    (tmp_path / "bad.parquet").write_text("PAR1 not really")
    with pytest.raises(DataError, match="is not a readable Parquet file"):
        load_file(tmp_path / "bad.parquet")


def test_format_not_detectable(tmp_file):
    p = tmp_file("d.jsonl", [{"q": "Why?", "a": "Because", "n": 3}])
    with pytest.raises(DataError) as e:
        load_file(p)
    msg = str(e.value)
    assert "could not detect the format of" in msg and "from its fields [q, a, n]" in msg
    assert "set data.format or map columns with data.columns, e.g. {prompt: q, completion: a}" in msg


def test_forced_format_with_wrong_fields(tmp_file):
    p = tmp_file("d.jsonl", [{"question": "Why?", "answer": "Because"}])
    with pytest.raises(DataError) as e:
        load_file(p, format="alpaca")
    assert str(e.value).endswith(
        "format alpaca needs instruction and output (input, system, history optional), but "
        f"{p} has fields [question, answer] — map your fields with data.columns, "
        "e.g. {instruction: question, output: answer}"
    )


def test_classification_without_label_column(tmp_file):
    p = tmp_file("d.jsonl", [{"text": "great", "stars": 5}])
    with pytest.raises(DataError) as e:
        load_file(p, format="classification")
    assert "format classification needs a label field" in str(e.value)
    assert "has fields [text, stars]" in str(e.value) and "e.g. {label: stars}" in str(e.value)


def test_mixed_formats(tmp_file):
    rows = RECORDS["alpaca"] * 3 + RECORDS["chat"]
    with pytest.raises(DataError) as e:
        load_file(tmp_file("d.jsonl", rows))
    msg = str(e.value)
    assert "mixes formats: 6 rows look like alpaca, 2 like chat (the first chat row is " in msg
    assert "d.jsonl:7)" in msg
    assert "put each format in its own file" in msg


def test_a_row_lacking_fields_is_not_another_format(tmp_file):
    res = load_file(tmp_file("d.jsonl", RECORDS["classification"] + [{"text": "no label"}]))
    assert res.format == "classification" and len(res.examples) == 2
    assert res.rejects[0].reason == "missing field: label"


def test_columns_errors(tmp_file):
    p = tmp_file("d.jsonl", [{"review": "x", "sentiment": "pos"}])
    with pytest.raises(DataError, match="data.columns maps text to 'body', but .* has no field 'body'"):
        load_file(p, columns={"text": "body"})
    with pytest.raises(DataError, match="data.columns maps an unknown field 'txt'"):
        load_file(p, columns={"txt": "review"})


def test_unknown_format_name(tmp_file):
    with pytest.raises(DataError, match="unknown data.format 'jsonl'"):
        load_file(tmp_file("d.jsonl", RECORDS["text"]), format="jsonl")


def test_source_path_is_the_path_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(Path("t.jsonl"), RECORDS["text"])
    assert load_file("t.jsonl").examples[1].source.where() == "t.jsonl:2"
