"""Data sets derived from the bundled tickets (examples/data/tickets.jsonl) for the method examples.

    python examples/make_derived.py

- data/tickets-feedback.jsonl: user feedback as preference pairs for DPO/ORPO (examples/dpo.yaml): the prompt
  of each ticket, the right routing as `chosen` and a wrong one (another queue or priority, seeded) as
  `rejected` — what thumbs up / thumbs down on a deployed triage bot turn into.
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
    for name, items in (("tickets-feedback", pairs), ("tickets-text", texts)):
        path = DATA / f"{name}.jsonl"
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items))
        print(f"wrote {len(items)} records to {path}")


if __name__ == "__main__":
    main()
