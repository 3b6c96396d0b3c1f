"""A reinforcement fine-tuning job on the ticket data, through the official openai client (OpenAI's RFT shape).

    tuneforge serve --env-file examples/serve.env          # in another terminal
    python examples/reinforcement_job.py [--base-url http://127.0.0.1:8000/v1] [--api-key sk-change-me-alice]

Rows are the ticket and its labelled JSON as an item field, `{"messages": [system, user], "label": {...}}`; the
grader is a weighted sum of tuneforge's field_match on the label's queue and priority and json_valid, trained as
GRPO (README: "Reinforcement jobs"). The script uploads the rows, creates the job and follows its reward.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import openai

TICKETS = Path(__file__).parent / "data" / "tickets.jsonl"
GRADER = {
    "type": "multi",
    "graders": {
        "fields": {"type": "field_match", "fields": ["queue", "priority"], "reference": "{{item.label}}"},
        "json": {"type": "json_valid"},
    },
    "calculate_output": "0.8 * fields + 0.2 * json",
}


def rft_rows(n: int) -> bytes:
    """The first n tickets in OpenAI's reinforcement shape: the prompt turns, and the label as an item field."""
    out = io.StringIO()
    for line in TICKETS.read_text().splitlines()[:n]:
        msgs = json.loads(line)["messages"]
        out.write(json.dumps({"messages": msgs[:-1], "label": json.loads(msgs[-1]["content"])}) + "\n")
    return out.getvalue().encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="sk-change-me-alice")
    p.add_argument("--model", default="smollm2-135m", help="a base model id from GET /v1/models")
    p.add_argument("--rows", type=int, default=200)
    a = p.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key)
    file = client.files.create(file=("tickets-rft.jsonl", rft_rows(a.rows)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=a.model,
        training_file=file.id,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": GRADER,
                "hyperparameters": {"n_epochs": 1, "batch_size": 4, "eval_interval": 10, "num_generations": 4},
            },
        },
    )
    print(f"created {job.id}")
    seen = None
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(10)
        job = client.fine_tuning.jobs.retrieve(job.id)
        events = client.fine_tuning.jobs.list_events(job.id, limit=1).data
        if events and events[0].id != seen:
            seen = events[0].id
            print(f"{job.status} step {job.step}/{job.total_steps}: {events[0].message}")
    print(job.status, job.fine_tuned_model or job.error)


if __name__ == "__main__":
    main()
