"""export/ollama.py: the Go template must prompt the model in Ollama exactly as the Jinja template did in training.

The oracle is a small Go text/template renderer written here (the subset the translation emits) fed the way Ollama
feeds it (server/routes.go, template/template.go): the SYSTEM default put first unless the request starts with a
system message, .System joining every system message, and .Messages holding the messages — system ones included
in current versions, left out in older ones; both are rendered.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess

import pytest

from tuneforge.errors import ExportError
from tuneforge.export.ollama import modelfile_text, parse_modelfile, translate_template
from tuneforge.models import templates

# ------------------------------------------------------------------------------------ a Go template renderer
_ACTION = re.compile(r'\{\{(-[ \t\r\n])?((?:"(?:\\.|[^"\\])*"|[^"])*?)([ \t\r\n]-)?\}\}', re.S)
_WORD = re.compile(r'\s*("(?:\\.|[^"\\])*"|:=|=|,|\(|\)|\$\w*(?:\.\w+)*|(?:\.\w+)+|\.|\w+)\s*')


def _truth(v):  # Go: false, 0, "", nil and empty slices are false — as in Python
    return bool(v)


FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "and": lambda *xs: next((x for x in xs if not _truth(x)), xs[-1]),
    "or": lambda *xs: next((x for x in xs if _truth(x)), xs[-1]),
    "not": lambda x: not _truth(x),
    "len": len,
    "slice": lambda x, i: x[i:],
}


def _words(body: str) -> list[str]:
    words, pos = [], 0
    while pos < len(body):
        m = _WORD.match(body, pos)
        assert m and m.end() > pos, f"not in the renderer's subset: {body[pos:]!r}"
        words.append(m.group(1))
        pos = m.end()
    return words


def _lex(src: str) -> list[tuple[str, object]]:
    items, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        text = text.lstrip(" \t\r\n") if trim_next else text
        items.append(("text", text.rstrip(" \t\r\n") if m.group(1) else text))
        items.append(("action", _words(m.group(2))))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = src[pos:]
    items.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return items


def _parse(items, i=0):
    """The nodes up to an {{ else ... }} or {{ end }}: (nodes, index of that action, its words)."""
    nodes = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            nodes.append(("text", body))
        elif body[0] in ("end", "else"):
            return nodes, i, body
        elif body[0] == "if":
            branches, cond = [], body[1:]
            while True:
                block, i, end = _parse(items, i + 1)
                branches.append((cond, block))
                if end == ["end"]:
                    break
                cond = end[2:] if end[1:2] == ["if"] else ["true"]
            nodes.append(("if", branches))
        elif body[0] == "range":
            assert body[2] == "," and body[4] == ":=", body
            block, i, end = _parse(items, i + 1)
            assert end == ["end"]
            nodes.append(("range", body[1], body[3], body[5:], block))
        elif len(body) > 1 and body[1] in (":=", "="):
            nodes.append((body[1], body[0], body[2:]))
        else:
            nodes.append(("print", body))
        i += 1
    return nodes, i, None


def _operand(words, dot, scopes):
    w, rest = words[0], words[1:]
    if w == "(":
        value, rest = _command(rest, dot, scopes)
        assert rest[0] == ")"
        return value, rest[1:]
    if w.startswith('"'):
        return json.loads(w), rest  # the translation writes Go strings with JSON's escapes
    if w in ("true", "false"):
        return w == "true", rest
    if w.isdigit():
        return int(w), rest
    if w.startswith("$"):
        name, *fields = w.split(".")
        value = next(s[name] for s in reversed(scopes) if name in s)
    else:
        value, fields = dot, [f for f in w.split(".") if f]
    for f in fields:
        value = value[f]
    return value, rest


def _command(words, dot, scopes):
    if words[0] not in FUNCS:
        return _operand(words, dot, scopes)
    args, rest = [], words[1:]
    while rest and rest[0] != ")":
        value, rest = _operand(rest, dot, scopes)
        args.append(value)
    return FUNCS[words[0]](*args), rest


def _eval(words, dot, scopes):
    value, rest = _command(words, dot, scopes)
    assert not rest, rest
    return value


def _exec(nodes, dot, scopes, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "print":
            value = _eval(node[1], dot, scopes)
            assert isinstance(value, str), value
            out.append(value)
        elif kind == ":=":
            scopes[-1][node[1]] = _eval(node[2], dot, scopes)
        elif kind == "=":
            next(s for s in reversed(scopes) if node[1] in s)[node[1]] = _eval(node[2], dot, scopes)
        elif kind == "if":
            for cond, block in node[1]:
                if _truth(_eval(cond, dot, scopes)):
                    scopes.append({})
                    _exec(block, dot, scopes, out)
                    scopes.pop()
                    break
        else:  # range $i, $_ := pipeline
            _, index, elem, pipeline, block = node
            for i, item in enumerate(_eval(pipeline, dot, scopes)):
                scopes.append({index: i, elem: item})
                _exec(block, item, scopes, out)
                scopes.pop()


def render_go(template: str, data: dict) -> str:
    nodes, _, end = _parse(_lex(template))
    assert end is None, f"unmatched {end}"
    out: list[str] = []
    _exec(nodes, data, [{"$": data}], out)
    return "".join(out)


def test_the_renderer_trims_and_scopes_like_go():
    src = 'a \n{{- "b\\n" }}\n {{- if and true (eq .X "y") }} c{{ else }}d{{ end -}}\n e'
    assert render_go(src, {"X": "y"}) == "ab\n ce"
    assert render_go(src, {"X": "z"}) == "ab\nde"
    # an assignment inside range changes the variable declared outside it (Go >= 1.11)
    src = "{{- $first := true }}{{ range $i, $_ := .L }}{{ if $first }}[{{ . }}]{{ end }}{{ $first = false }}{{ end }}"
    assert render_go(src, {"L": ["p", "q"]}) == "[p]"
    src = "{{ range $i, $_ := .L }}{{ if eq (len (slice $.L $i)) 1 }}last={{ . }}{{ end }}{{ end }}"
    assert render_go(src, {"L": ["p", "q"]}) == "last=q"


# ------------------------------------------------------------------------------------------- the oracle
def ollama_prompt(t, messages, system_in_messages=True) -> str:
    msgs = list(messages)
    if t.system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": t.system})
    data = {
        "System": "\n\n".join(m["content"] for m in msgs if m["role"] == "system"),
        "Messages": [
            {"Role": m["role"], "Content": m["content"]}
            for m in msgs
            if system_in_messages or m["role"] != "system"
        ],
    }
    return render_go(t.template, data)


def jinja_prompt(tok, t, messages) -> str:
    """The training-time rendering as Ollama should give it: with the generation prompt unless the conversation
    ends with an answer (Ollama leaves that open, to continue it), and without a BOS that llama.cpp adds."""
    answer_last = messages[-1]["role"] == "assistant"
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=not answer_last)
    if t.bos_stripped:
        assert text.startswith(tok.bos_token)
        text = text[len(tok.bos_token) :]
    if answer_last:
        assert text.endswith(t.assistant_suffix)
        text = text[: len(text) - len(t.assistant_suffix)]
    return text


SYS = {"role": "system", "content": "Answer in one word.\nAlways."}
U1 = {"role": "user", "content": 'Capital of "France"?'}
A1 = {"role": "assistant", "content": "Paris"}
U2 = {"role": "user", "content": "And {{ .System }} of Japan?\n(one word)"}
A2 = {"role": "assistant", "content": "Tokyo."}
CONVERSATIONS = [[U1], [SYS, U1], [U1, A1, U2], [SYS, U1, A1, U2], [U1, A1], [SYS, U1, A1, U2, A2], [SYS]]

LLAMA3 = (  # Meta's Llama 3 Instruct template
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA31 = (  # Llama 3.1's shape: a system block always, with the knowledge date before the system prompt
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n{{ system }}<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
TEMPLATES = {
    "smollm2": None,  # the tokenizer's own: ChatML with a default system prompt
    "chatml": templates.CHATML,
    "plain": templates.PLAIN,
    "gemma": templates.GEMMA,
    "llama3": LLAMA3,
    "llama3.1": LLAMA31,
}


def with_template(tok, template):
    tok = copy.deepcopy(tok)
    if template is not None:
        tok.chat_template = template
    return tok


class AddsBos:
    """A tokenizer that puts BOS in front of plain text, as Llama's and Gemma's do (SmolLM2's does not)."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, text, **kw):
        enc = self.tok(text, **kw)
        return {**enc, "input_ids": [self.tok.bos_token_id, *enc["input_ids"]]}


# ------------------------------------------------------------------------------------------ translation
@pytest.mark.parametrize("name", TEMPLATES)
def test_ollama_renders_every_conversation_like_the_jinja_template(smol_tokenizer, name):
    tok = with_template(smol_tokenizer, TEMPLATES[name])
    t = translate_template(tok)
    for conv in CONVERSATIONS:
        expected = jinja_prompt(tok, t, conv)
        assert ollama_prompt(t, conv) == expected, conv
        if conv != [SYS]:  # older Ollama, whose .Messages lacks system messages, has no turn to prompt after
            assert ollama_prompt(t, conv, system_in_messages=False) == expected, conv


def test_smollm2_pieces_and_default_system_prompt(smol_tokenizer):
    t = translate_template(smol_tokenizer)
    assert t.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert (t.system_prefix, t.system_suffix) == ("<|im_start|>system\n", "<|im_end|>\n")
    assert (t.user_prefix, t.user_suffix) == ("<|im_start|>user\n", "<|im_end|>\n")
    assert (t.assistant_prefix, t.assistant_suffix) == ("<|im_start|>assistant\n", "<|im_end|>\n")
    assert t.generation_prompt == "<|im_start|>assistant\n"
    # SmolLM2's BOS is <|im_start|>, written before every turn: it belongs to the turns, not to llama.cpp
    assert (t.head, t.bos_stripped) == ("", False)
    assert translate_template(with_template(smol_tokenizer, templates.CHATML)).system is None


def test_template_shapes(smol_tokenizer):
    gemma = translate_template(with_template(smol_tokenizer, templates.GEMMA))
    assert gemma.system_in_first_user and (gemma.system_prefix, gemma.system_suffix) == ("", "\n\n")
    assert gemma.head == smol_tokenizer.bos_token and not gemma.bos_stripped  # this tokenizer adds no BOS
    llama31 = translate_template(with_template(smol_tokenizer, LLAMA31))
    assert llama31.system_always and llama31.system is None
    assert "Cutting Knowledge Date" in llama31.system_prefix


def test_bos_is_left_to_llama_cpp_when_the_tokenizer_adds_it(smol_tokenizer):
    tok = AddsBos(with_template(smol_tokenizer, LLAMA3))
    t = translate_template(tok)
    assert t.bos_stripped and t.head == tok.bos_token
    assert tok.bos_token not in t.template
    for conv in CONVERSATIONS:
        assert ollama_prompt(t, conv) == jinja_prompt(tok, t, conv)


NUMBERED = (  # per-position logic: every turn carries its number
    "{% for m in messages %}[{{ loop.index }}] {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[next] assistant:{% endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
)


@pytest.mark.parametrize("template", [NUMBERED, NO_SYSTEM], ids=["per-position", "refuses-system"])
def test_untranslatable_templates_raise_with_the_fix(smol_tokenizer, template):
    with pytest.raises(ExportError) as err:
        translate_template(with_template(smol_tokenizer, template))
    assert "cannot be translated" in err.value.problem and "template.md" in err.value.fix


def test_a_tokenizer_without_template_raises(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    with pytest.raises(ExportError, match="no chat template"):
        translate_template(tok)


# ----------------------------------------------------------------------------------------------- Modelfile
def test_modelfile_round_trip(smol_tokenizer):
    t = translate_template(smol_tokenizer)
    stops = ["<|im_end|>", "<|endoftext|>"]
    text = modelfile_text("smollm2.gguf", t, stops, 2048, "Apache-2.0\nsee LICENSE", {"temperature": 0.2})
    m = parse_modelfile(text)
    assert m["FROM"] == "./smollm2.gguf"
    assert m["TEMPLATE"] == t.template
    assert m["SYSTEM"] == t.system
    assert m["LICENSE"] == "Apache-2.0\nsee LICENSE"
    assert m["PARAMETER"] == [("stop", s) for s in stops] + [("num_ctx", "2048"), ("temperature", "0.2")]


def test_modelfile_without_default_system_has_no_system_line(smol_tokenizer):
    t = translate_template(with_template(smol_tokenizer, templates.CHATML))
    text = modelfile_text("m.gguf", t, ["<|im_end|>"], 512)
    assert "SYSTEM" not in text and "LICENSE" not in text
    assert parse_modelfile(text)["SYSTEM"] is None


def test_parse_modelfile_reads_what_ollama_reads():
    text = (
        "# a comment\n\nfrom ./a b.gguf\n"
        'TEMPLATE """{{ .Prompt }} ends with a quote""""\n'
        'PARAMETER stop "<end of turn>"\nparameter num_ctx 4096\n'
        'SYSTEM "one line"\nMESSAGE user hi\n'
    )
    m = parse_modelfile(text)
    assert m["FROM"] == "./a b.gguf"
    assert m["TEMPLATE"] == '{{ .Prompt }} ends with a quote"'
    assert m["PARAMETER"] == [("stop", "<end of turn>"), ("num_ctx", "4096")]
    assert m["SYSTEM"] == "one line" and m["MESSAGE"] == ["user hi"]
    with pytest.raises(ExportError):
        parse_modelfile("TEMPLATE x\n")  # no FROM


@pytest.mark.parametrize(
    "kwargs",
    [
        {"license_text": 'MIT """quoted"""'},
        {"stop_tokens": ['say "stop"']},
        {"stop_tokens": []},
        {"gguf_name": "../m.gguf"},
        {"num_ctx": 0},
        {"parameters": {"stop": "x"}},
    ],
    ids=["triple-quotes", "quote-in-stop", "no-stop", "path", "num_ctx", "stop-as-parameter"],
)
def test_modelfile_refuses_what_ollama_would_misread(smol_tokenizer, kwargs):
    args = {"gguf_name": "m.gguf", "stop_tokens": ["<|im_end|>"], "num_ctx": 2048, **kwargs}
    with pytest.raises(ExportError):
        modelfile_text(template=translate_template(smol_tokenizer), **args)


# -------------------------------------------------------------------------------------- a real Ollama
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ollama") is None, reason="no ollama binary on PATH")
def test_ollama_creates_the_model_and_it_stops_by_itself(tmp_path, smol_tokenizer):
    import httpx

    from tuneforge.export.common import stop_tokens
    from tuneforge.models.registry import bundled

    if subprocess.run(["ollama", "list"], capture_output=True).returncode != 0:
        pytest.skip("the ollama server is not running")
    (tmp_path / "smollm2.gguf").symlink_to(bundled("smollm2-135m").locate())
    t = translate_template(smol_tokenizer)
    stops = [text for _, text in stop_tokens(smol_tokenizer)]
    (tmp_path / "Modelfile").write_text(
        modelfile_text("smollm2.gguf", t, stops, 2048, parameters={"temperature": 0})
    )
    name = f"tuneforge-test-{os.getpid()}"
    subprocess.run(["ollama", "create", name, "-f", str(tmp_path / "Modelfile")], check=True, timeout=300)
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    host = host if host.startswith("http") else f"http://{host}"
    try:
        assert (
            httpx.post(f"{host}/api/show", json={"model": name}, timeout=60).json()["template"] == t.template
        )
        chat = {"model": name, "messages": [U1], "stream": False, "options": {"num_predict": 200}}
        reply = httpx.post(f"{host}/api/chat", json=chat, timeout=300).json()
        assert reply["done_reason"] == "stop" and reply["message"]["content"].strip()
        assert "<|im_" not in reply["message"]["content"]
    finally:
        subprocess.run(["ollama", "rm", name], capture_output=True)
