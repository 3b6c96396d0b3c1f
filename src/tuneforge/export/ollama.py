"""`ollama`: the GGUF plus a Modelfile whose TEMPLATE is the model's chat template in Ollama's Go syntax.

Ollama does not run Jinja, so the chat template is rewritten. Rather than parse Jinja, the template is rendered on
conversations of marker strings and cut at the markers into the pieces written around each message (a prefix and a
suffix per role, and the generation prompt). Put together again, the pieces must reproduce the Jinja rendering
exactly for conversations with and without a system message, of one and two rounds, with and without the generation
prompt; a template they cannot reproduce (per-position logic, one that refuses a system message ...) raises
ExportError rather than giving a model that Ollama prompts unlike its training. Filters on the content (Jinja's
`| trim`) are invisible to the markers: Ollama passes the content as sent, as its own templates do.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from tuneforge.errors import ExportError
from tuneforge.export.gguf import adds_bos

TEMPLATE_FIX = (
    "write the Modelfile's TEMPLATE by hand, see https://github.com/ollama/ollama/blob/main/docs/template.md"
)
SYSTEM, TURNS = "XSYSX", ("XU1X", "XA1X", "XU2X", "XA2X")
TRIPLE, QUOTE = '"""', '"'


@dataclass(frozen=True)
class OllamaTemplate:
    template: str  # the Go template (the Modelfile's TEMPLATE)
    system: str | None  # the default system prompt the Jinja template writes when there is none (SYSTEM)
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str
    head: str = ""  # written once, before everything: a BOS the template writes
    bos_stripped: bool = False  # the head (BOS) is left out of the Go template: llama.cpp adds it
    system_in_first_user: bool = False  # Gemma: the system prompt opens the first user turn
    system_always: bool = False  # Llama 3.1: the system block is written even with no system prompt


def _conv(system: bool, turns: int) -> list[dict]:
    msgs = [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(TURNS[:turns])]
    return [{"role": "system", "content": SYSTEM}, *msgs] if system else msgs


def _fail(why: str) -> ExportError:
    return ExportError(f"the chat template cannot be translated for Ollama: {why}", TEMPLATE_FIX)


def _cut(text: str, markers: list[str]) -> list[str]:
    """The text before, between and after the markers, which must appear once each and in order."""
    pieces = []
    for m in markers:
        if text.count(m) != 1:
            raise _fail(f"a message's content ({m}) is written {text.count(m)} times, not once")
        head, text = text.split(m)
        pieces.append(head)
    return [*pieces, text]


def _unprefix(text: str, prefix: str, why: str) -> str:
    if not text.startswith(prefix):
        raise _fail(why)
    return text[len(prefix) :]


def translate_template(tokenizer: Any) -> OllamaTemplate:
    """The tokenizer's chat template in Ollama's form; ExportError when its pieces do not rebuild it exactly."""
    if not getattr(tokenizer, "chat_template", None):
        raise ExportError("the tokenizer has no chat template for Ollama", "set model.chat_template")
    head = ""

    def render(msgs: list[dict], gen: bool) -> str:
        roles = "/".join(m["role"] for m in msgs)
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        # a template may raise anything on a conversation it refuses (raise_exception, KeyError ...)
        except Exception as e:
            raise _fail(f"it fails on a {roles} conversation ({e})") from e
        return _unprefix(text, head, f"a {roles} conversation does not start with {head!r}")

    full = render(_conv(True, 4), False)
    # A BOS written once at the start belongs to no turn. llama.cpp adds one itself when the GGUF's add_bos_token
    # says so (set when the tokenizer adds BOS to plain text): the Go template then leaves it out, or there would
    # be two. A BOS written before every turn (SmolLM2's is <|im_start|>) is part of the turns.
    bos = tokenizer.bos_token or ""
    if bos and full.startswith(bos) and full.count(bos) == 1:
        head, full = bos, full[len(bos) :]
    sp, ss_up, us_ap, as_up, _, as_ = _cut(full, [SYSTEM, *TURNS])
    us = _cut(render(_conv(True, 3), False), [TURNS[2]])[1]
    g = _cut(render(_conv(True, 3), True), [TURNS[2]])[1]
    g = _unprefix(g, us, "the generation prompt is not written at the end")
    ap = _unprefix(us_ap, us, "a user turn ends differently before an answer")
    up = _unprefix(as_up, as_, "an answer ends differently before a user turn")
    folded = not ss_up.endswith(up)
    if not folded:
        ss = ss_up[: len(ss_up) - len(up)]
    elif sp.startswith(up):  # Gemma writes the system prompt inside the first user turn
        sp, ss = sp[len(up) :], ss_up
    else:
        raise _fail("the system message is neither a turn of its own nor the start of the first user turn")
    # With no system message a template may still write a system block: its content is the default prompt.
    first = _cut(render(_conv(False, 2), False), [TURNS[0]])[0]
    before, after = (up + sp, ss) if folded else (sp, ss + up)
    default = None
    if first != up:
        if not (first.startswith(before) and first.endswith(after) and len(first) >= len(before + after)):
            raise _fail("the first turn of a conversation without a system message is written differently")
        default = first[len(before) : len(first) - len(after)] or None
    always = first != up and default is None
    bos_stripped = bool(head) and adds_bos(tokenizer)
    t = OllamaTemplate("", default, sp, ss, up, us, ap, as_, g, head, bos_stripped, folded, always)
    for system in (True, False):
        for turns, gen in ((1, False), (1, True), (2, False), (3, False), (3, True), (4, False)):
            msgs = _conv(system, turns)
            if _assemble(t, msgs, gen) != render(msgs, gen):
                roles = "/".join(m["role"] for m in msgs)
                raise _fail(f"its pieces put together do not give its rendering of a {roles} conversation")
    return dataclasses.replace(t, template=_go_template(t))


def _assemble(t: OllamaTemplate, msgs: list[dict], gen: bool) -> str:
    """The Jinja rendering after the head, rebuilt from the pieces (every answer closed, as in training)."""
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else t.system
    block = t.system_prefix + (system or "") + t.system_suffix if system or t.system_always else ""
    out, folded = ("", block) if t.system_in_first_user else (block, "")
    for m in msgs:
        if m["role"] == "user":
            out += t.user_prefix + folded + m["content"] + t.user_suffix
            folded = ""
        elif m["role"] == "assistant":
            out += t.assistant_prefix + m["content"] + t.assistant_suffix
    return out + (t.generation_prompt if gen else "")


def _go_template(t: OllamaTemplate) -> str:
    # Pieces are written as Go string constants: layout newlines can then be trimmed with `{{-` without eating a
    # newline that belongs to a piece, and a `{` in a piece cannot open an action.
    def q(piece: str) -> str:
        return f"{{{{ {json.dumps(piece, ensure_ascii=False)} }}}}" if piece else ""

    block = q(t.system_prefix) + "{{ $.System }}" + q(t.system_suffix)
    # Ollama gives the system prompt (the request's, else SYSTEM) as .System and, in current versions, also as a
    # message of .Messages; rendering it from .System only, and skipping system messages, writes it once in both.
    when = "true" if t.system_always else "$.System"
    if t.system_in_first_user:
        top, in_user = (
            "{{ $first := true }}",
            f"{{{{ if and $first {when} }}}}{block}{{{{ end }}}}{{{{ $first = false }}}}",
        )
    else:
        top, in_user = f"{{{{ if {when} }}}}{block}{{{{ end }}}}", ""
    # The last answer stays open (no suffix): Ollama continues it, as it does a prefilled assistant message.
    answer_end = f"{{{{ if not $last }}}}{q(t.assistant_suffix)}{{{{ end }}}}" if t.assistant_suffix else ""
    lines = [
        q(t.head) if not t.bos_stripped else "",
        top,
        "{{ range $i, $_ := .Messages }}",
        "{{ $last := eq (len (slice $.Messages $i)) 1 }}",
        f'{{{{ if eq .Role "user" }}}}{q(t.user_prefix)}{in_user}{{{{ .Content }}}}{q(t.user_suffix)}',
        f'{{{{ else if eq .Role "assistant" }}}}{q(t.assistant_prefix)}{{{{ .Content }}}}{answer_end}',
        "{{ end }}",
        f'{{{{ if and $last (ne .Role "assistant") }}}}{q(t.generation_prompt)}{{{{ end }}}}',
        "{{ end }}",
    ]
    return "\n".join("{{-" + line[2:] for line in lines if line)


def _checked(name: str, value: str, quotes: str) -> str:
    # Ollama's Modelfile reader has no escapes: a triple-quoted value ends at the next triple quote, a quoted or bare
    # one at the end of its line, and characters that are not printable are dropped.
    printable = all(c.isprintable() or c in "\n\t" for c in value)
    if not printable or (quotes and quotes in value) or ("\n" in value and quotes != TRIPLE):
        raise ExportError(
            f"the Modelfile's {name} {value[:60]!r} holds quotes, a line break or a character "
            "that Ollama's Modelfile reader would misread",
            "remove it, or write the Modelfile by hand",
        )
    return f"{quotes}{value}{quotes}"


def modelfile_text(
    gguf_name: str,
    template: OllamaTemplate,
    stop_tokens: list[str],
    num_ctx: int,
    license_text: str | None = None,
    parameters: dict | None = None,
) -> str:
    if gguf_name != gguf_name.strip() or not gguf_name or re.search(r"[/\\]", gguf_name):
        raise ExportError(f"{gguf_name!r} is not a file name", "name the .gguf in the Ollama folder")
    if not stop_tokens:  # without them the model talks past its answer (the end-of-turn token is not EOS)
        raise ExportError("an Ollama model needs its stop tokens", "pass the end-of-turn and EOS tokens")
    if not isinstance(num_ctx, int) or num_ctx < 1:
        raise ExportError(f"num_ctx {num_ctx!r} is not a positive whole number", "pass the context length")
    lines = [
        f"FROM ./{_checked('FROM', gguf_name, '')}",
        f"TEMPLATE {_checked('TEMPLATE', template.template, TRIPLE)}",
    ]
    if template.system is not None:
        lines.append(f"SYSTEM {_checked('SYSTEM', template.system, TRIPLE)}")
    lines += [f"PARAMETER stop {_checked('stop', s, QUOTE)}" for s in stop_tokens]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    for key, value in (parameters or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", key) or key in ("stop", "num_ctx"):
            raise ExportError(f"{key!r} cannot be an extra parameter", "pass stop and num_ctx by their names")
        for v in value if isinstance(value, list | tuple) else [value]:
            v = str(v).lower() if isinstance(v, bool) else v  # Go's strconv.ParseBool
            lines.append(f"PARAMETER {key} {_checked(key, v, QUOTE) if isinstance(v, str) else v}")
    if license_text is not None:
        lines.append(f"LICENSE {_checked('LICENSE', license_text, TRIPLE)}")
    return "\n".join(lines) + "\n"


_SKIP = re.compile(r"(?:\s|#[^\n]*)*")
_NAME = re.compile(r"([A-Za-z]+)[ \t]+")
_KEY = re.compile(r"([A-Za-z0-9_]+)[ \t]+")
_VALUE = re.compile(r'"""(.*?)"""(?=\s|$)|"([^\n]*)"[ \t]*(?=\n|$)|([^\n]*?)[ \t]*(?=\n|$)', re.S)


def parse_modelfile(text: str) -> dict:
    """The commands of a Modelfile, read as Ollama reads them; commands other than these five are kept in lists."""
    out: dict[str, Any] = {"FROM": None, "TEMPLATE": None, "SYSTEM": None, "PARAMETER": [], "LICENSE": None}
    pos = _SKIP.match(text).end()
    while pos < len(text):
        name = _NAME.match(text, pos)
        command = name.group(1).upper() if name else None
        key = _KEY.match(text, name.end()) if command == "PARAMETER" else None
        value = _VALUE.match(text, (key or name).end()) if name and (key or command != "PARAMETER") else None
        if value is None:
            raise ExportError(f"the Modelfile cannot be read at {text[pos : pos + 40]!r}", TEMPLATE_FIX)
        v = next(g for g in value.groups() if g is not None)
        if key:
            out["PARAMETER"].append((key.group(1), v))
        elif command in out:
            out[command] = v
        else:
            out.setdefault(command, []).append(v)
        pos = _SKIP.match(text, value.end()).end()
    if out["FROM"] is None:
        raise ExportError("the Modelfile has no FROM line", "start it with FROM ./<model>.gguf")
    return out
