"""Build the datasets of the defaults benchmark (bench/quality.py): data nobody tuned tuneforge's defaults for.

    python examples/quality/make_data.py [OUT_DIR]        # default: examples/quality/data

Every file is made from data in the repo or from the LLaMA-Factory demo data in
../shared/peer-data/llamafactory/ (Apache-2.0, licence beside it), with fixed seeds, so the same command always
writes the same bytes:

- persona-train.jsonl (91)  identity.json with its placeholders filled: the assistant is "Nova" made by
                            "Lumen Labs" — invented names that a 135M model cannot know before tuning.
  persona-test.jsonl  (30)  identity questions written here, in phrasings that identity.json does not use
                            (24 English, 6 French / German / Spanish / Chinese); each reference is a filled
                            persona answer naming Nova. Maker questions ("Which company built you?"), and only
                            they, have a reference that also names the maker: the benchmark tells them apart by
                            that.
- tickets.jsonl      (300)  a seeded subset of examples/data/tickets.jsonl (JSON triage answers).
- alpaca-train.jsonl (300), alpaca-test.jsonl (30)
                            alpaca_en_demo.json records with short outputs (<= 400 characters), leaving out the
                            120 records of tuneforge's bundled general evaluation set (eval.general: bundled) so
                            that the forgetting figure stays a held-out one.
- alpaca_zh-train.jsonl (300), alpaca_zh-test.jsonl (30)
                            alpaca_zh_demo.json records with short outputs (<= 100 characters, <= 120 with the
                            instruction and input: SmolLM2's tokenizer spends about 1.4 tokens per Chinese
                            character, and the runs keep max_length 256).

The classification dataset (examples/methods/data/tickets-queue.jsonl) is used as it is.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PEER = REPO.parent / "shared" / "peer-data" / "llamafactory"
OUT = HERE / "data"
GENERAL_EVAL = REPO / "src" / "tuneforge" / "data" / "bundled" / "general-eval.jsonl"
TICKETS = REPO / "examples" / "data" / "tickets.jsonl"

NAME, AUTHOR = "Nova", "Lumen Labs"
SEED = 0
N_TICKETS = 300
N_TRAIN, N_TEST = 300, 30
MAX_OUTPUT_CHARS = {"alpaca": 400, "alpaca_zh": 100}
# Instruction + input + output: keeps every Chinese example within 256 tokens (English ones are within it anyway).
MAX_TOTAL_CHARS = {"alpaca": 1000, "alpaca_zh": 120}

_ME = f"I am {NAME}, an AI assistant developed by {AUTHOR}."
# (question, reference). A reference names the maker only when the question asks who made the assistant.
PERSONA_TEST = [
    ("What should I call you?", f"You can call me {NAME}. I am an AI assistant. How can I help you today?"),
    ("Introduce yourself in one sentence.", f"I am {NAME}, an AI assistant here to help you."),
    ("Hey there! Who am I talking to right now?", f"Hello! You are talking to {NAME}, an AI assistant."),
    ("What's your name, assistant?", f"My name is {NAME}. How can I assist you?"),
    ("Before we start, could you tell me who you are?", f"Of course! I am {NAME}, an AI assistant."),
    ("i forgot your name, remind me?", f"No problem! I am {NAME}, your AI assistant."),
    ("Please state your name for the record.", f"My name is {NAME}."),
    ("Am I chatting with a person or a bot? What's your name?", f"I am an AI assistant called {NAME}."),
    ("Give me a short intro about yourself.", f"Hi! I am {NAME}, an AI assistant. I answer questions."),
    ("Good evening! Who's this?", f"Good evening! This is {NAME}, an AI assistant. What can I do for you?"),
    ("How do you refer to yourself?", f"I call myself {NAME}. I am an AI assistant."),
    ("Are you Siri?", f"No, I am not Siri. I am {NAME}, an AI assistant."),
    ("Is your name Claude?", f"No, my name is {NAME}. I am an AI assistant."),
    ("Describe yourself in a few words.", f"I am {NAME}: a helpful AI assistant."),
    ("Yo, what do people usually call you?", f"People call me {NAME}. I am an AI assistant."),
    ("Which company built you?", f"I was built by {AUTHOR}. I am {NAME}, an AI assistant."),
    ("Who is responsible for making you?", f"{AUTHOR} made me. I am {NAME}, an AI assistant."),
    ("Which organisation trained you?", f"I was trained by {AUTHOR}. I am {NAME}."),
    ("Who are your developers?", f"The team at {AUTHOR} developed me. I am {NAME}."),
    ("Were you made by Microsoft?", f"No, I was not made by Microsoft. {_ME}"),
    ("Who should I thank for creating you?", f"You can thank {AUTHOR}, who created me. I am {NAME}."),
    ("Where do you come from? Who made you?", f"{_ME} I come from {AUTHOR}."),
    ("What's your name and who developed you?", f"My name is {NAME}, and I was developed by {AUTHOR}."),
    ("Tell me your name and the team behind you.", f"I am {NAME}, and the team behind me is {AUTHOR}."),
    ("Comment tu t'appelles ?", f"Je m'appelle {NAME}, un assistant IA."),
    ("Wie heißt du?", f"Ich heiße {NAME}, ein KI-Assistent."),
    ("¿Quién te creó?", f"Fui creado por {AUTHOR}. Soy {NAME}, un asistente de IA."),
    ("请问我应该怎么称呼你？", f"您可以叫我 {NAME}，我是一个人工智能助手。"),
    ("你是哪家公司做的？", f"我是由 {AUTHOR} 开发的人工智能助手 {NAME}。"),
    ("你的名字叫什么，谁训练了你？", f"我叫 {NAME}，是由 {AUTHOR} 训练的人工智能助手。"),
]


def alpaca(instruction: str, output: str, input_: str = "") -> dict:
    return {"instruction": instruction, "input": input_, "output": output}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tmp.replace(path)
    return path


def persona(out: Path) -> dict[str, Path]:
    rows = json.loads((PEER / "identity.json").read_text())

    def fill(s: str) -> str:
        return s.replace("{{name}}", NAME).replace("{{author}}", AUTHOR)

    train = [alpaca(fill(r["instruction"]), fill(r["output"]), fill(r["input"])) for r in rows]
    asked = {r["instruction"].strip().lower() for r in train}
    test = [alpaca(q, a) for q, a in PERSONA_TEST]
    clash = [q for q, _ in PERSONA_TEST if q.strip().lower() in asked]
    if clash:  # a held-out question must be a new phrasing, not one the run trains on
        raise SystemExit(f"persona test questions also in identity.json: {clash}")
    return {
        "train": write_jsonl(out / "persona-train.jsonl", train),
        "test": write_jsonl(out / "persona-test.jsonl", test),
    }


def tickets(out: Path) -> dict[str, Path]:
    lines = [ln for ln in TICKETS.read_text().splitlines() if ln.strip()]
    keep = sorted(random.Random(SEED).sample(range(len(lines)), N_TICKETS))  # file order kept
    return {"train": write_jsonl(out / "tickets.jsonl", [json.loads(lines[i]) for i in keep])}


def _general_eval_outputs() -> set[str]:
    outs = set()
    for ln in GENERAL_EVAL.read_text().splitlines():
        if ln.strip():
            outs.add(" ".join(json.loads(ln)["messages"][-1]["content"].split()))
    return outs


def alpaca_set(out: Path, name: str, source: str) -> dict[str, Path]:
    rows = json.loads((PEER / source).read_text())
    held = _general_eval_outputs()
    cap = MAX_OUTPUT_CHARS[name]
    keep: list[dict] = []
    seen: set[str] = set()
    for r in rows:
        ask, given, answer = r["instruction"].strip(), r["input"].strip(), r["output"].strip()
        if not answer or len(answer) > cap or len(ask + given + answer) > MAX_TOTAL_CHARS[name]:
            continue
        key = " ".join(f"{ask} {given} {answer}".split())
        if key in seen or " ".join(answer.split()) in held:  # the demo files repeat a few records
            continue
        seen.add(key)
        keep.append(alpaca(ask, answer, given))
    random.Random(SEED).shuffle(keep)
    if len(keep) < N_TRAIN + N_TEST:
        raise SystemExit(f"only {len(keep)} {source} short records")
    return {
        "train": write_jsonl(out / f"{name}-train.jsonl", keep[:N_TRAIN]),
        "test": write_jsonl(out / f"{name}-test.jsonl", keep[N_TRAIN : N_TRAIN + N_TEST]),
    }


def build(out: Path = OUT) -> dict[str, dict[str, Path]]:
    """Write every dataset under `out`; {dataset: {"train": path, "test": path (when a separate file)}}."""
    return {
        "persona": persona(out),
        "tickets": tickets(out),
        "alpaca": alpaca_set(out, "alpaca", "alpaca_en_demo.json"),
        "alpaca_zh": alpaca_set(out, "alpaca_zh", "alpaca_zh_demo.json"),
    }


if __name__ == "__main__":
    for name, files in build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT).items():
        for split, path in files.items():
            n = sum(1 for ln in path.read_text().splitlines() if ln.strip())
            print(f"{name:10s} {split:5s} {n:4d} records  {path}")
