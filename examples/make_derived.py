"""Data sets derived from the bundled tickets (examples/data/tickets.jsonl) for the method examples.

    python examples/make_derived.py

- data/tickets-feedback.jsonl: user feedback as preference pairs for DPO/ORPO (examples/dpo.yaml): the prompt
  of each ticket, the right routing as `chosen` and a wrong one (another queue or priority, seeded) as
  `rejected` — what thumbs up / thumbs down on a deployed triage bot turn into.
- data/tickets-kto.jsonl: unpaired feedback for KTO (examples/kto.yaml): 500 tickets, each with one answer of a
  deployed bot that is right about two times in three, and the user's verdict on it (`label` true for the right
  routing, false for a wrong one), in TRL's {prompt, completion, label} shape.
- data/tickets-kto-test.jsonl: the other 100 tickets with their right routing (`label: true`), kept out of
  tickets-kto.jsonl so that kto.yaml's before/after test scores against right answers only.
- data/tickets-text.jsonl: the ticket texts alone as raw `text` records, the "domain" corpus for continued
  pre-training (examples/cpt.yaml, examples/stages.yaml).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
QUEUES = ["billing", "technical", "account", "shipping", "returns", "sales"]
PRIORITIES = ["low", "normal", "high", "urgent"]


def main() -> None:
    rng = random.Random(0)
    rows = [json.loads(line) for line in (DATA / "tickets.jsonl").read_text().splitlines() if line.strip()]
    pairs, texts = [], []
    for r in rows:
        prompt = [m for m in r["messages"] if m["role"] != "assistant"]
        right = json.loads(r["messages"][-1]["content"])
        wrong = dict(right)
        if rng.random() < 0.5:
            wrong["queue"] = rng.choice([q for q in QUEUES if q != right["queue"]])
        else:
            wrong["priority"] = rng.choice([p for p in PRIORITIES if p != right["priority"]])
        pairs.append({"prompt": prompt, "chosen": json.dumps(right), "rejected": json.dumps(wrong)})
        texts.append({"text": next(m["content"] for m in prompt if m["role"] == "user")})
    kto, kto_test = unpaired_feedback(rows)
    for name, items in (
        ("tickets-feedback", pairs),
        ("tickets-text", texts),
        ("tickets-kto", kto),
        ("tickets-kto-test", kto_test),
    ):
        path = DATA / f"{name}.jsonl"
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items))
        print(f"wrote {len(items)} records to {path}")


def unpaired_feedback(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """KTO records: one verdict per answer, two thirds thumbs up; 100 tickets held out with the right answer.
    Its own random stream, so the other derived files do not change."""
    rng = random.Random(1)
    held = set(rng.sample(range(len(rows)), 100))
    kto, test = [], []
    for i, r in enumerate(rows):
        prompt = [m for m in r["messages"] if m["role"] != "assistant"]
        right = json.loads(r["messages"][-1]["content"])
        if i in held:
            test.append({"messages": r["messages"], "label": True})
            continue
        good = rng.random() < 2 / 3
        answer = dict(right)
        if not good:
            if rng.random() < 0.5:
                answer["queue"] = rng.choice([q for q in QUEUES if q != right["queue"]])
            else:
                answer["priority"] = rng.choice([p for p in PRIORITIES if p != right["priority"]])
        completion = [{"role": "assistant", "content": json.dumps(answer)}]
        kto.append({"prompt": prompt, "completion": completion, "label": good})
    return kto, test


if __name__ == "__main__":
    main()
