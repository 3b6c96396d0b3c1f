"""A simulated user population for the feedback loop (README "After deployment").

Two tuned versions of the ticket model go behind one deployment at 50/50 on a real `tuneforge serve` app (uvicorn
on 127.0.0.1, the official `openai` client). Simulated users send the held-out tickets (the stronger run's test
split), each ticket by `--asks` different users, and rate every answer by its correctness — the simulator knows
the right queue and priority: thumbs up and 5 when both are right, thumbs down and 3 when only the queue is, down
and 1 otherwise; a share of users (`--noise`) clicks the wrong thumb, and a share of wrong answers gets the right
answer back as a correction (`--corrections`). Then it prints the deployment's per-arm figures and the test
between the arms, and writes the training files made from the feedback.

    python examples/feedback_sim.py --strong runs/demo --weak runs/tickets-weak --out runs/feedback-sim

Writes OUT/figures.json (the stats), OUT/datasets.json (what the export used and skipped), OUT/feedback/*.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import uvicorn
from sqlalchemy import select

from tuneforge.cli import print_deployment_stats
from tuneforge.jobs import store
from tuneforge.jobs.store import FineTunedModel
from tuneforge.progress import console
from tuneforge.serve.app import create_app
from tuneforge.settings import Settings

KEY, TENANT, BASE = "sk-feedback-sim-0001", "sim", "smollm2-135m"


def register(settings: Settings, runs: dict[str, Path]) -> None:
    """The two run folders as the tenant's fine-tuned models (what a finished job would have registered)."""
    sessions = store.session_factory(store.engine_for(settings))
    with store.transaction(sessions) as s:
        for model_id, run in runs.items():
            if s.scalar(select(FineTunedModel).where(FineTunedModel.id == model_id)) is None:
                s.add(
                    FineTunedModel(
                        id=model_id,
                        owner=TENANT,
                        base=BASE,
                        job_id="-",
                        run_dir=str(run.resolve()),
                        training_type="lora",
                        created_at=int(time.time()),
                    )
                )


def rate(answer: str, reference: dict) -> dict:
    """The simulator's verdict: it knows the right queue and priority."""
    try:
        got = json.loads(answer)
        queue_ok = got.get("queue") == reference["queue"]
        both = queue_ok and got.get("priority") == reference["priority"]
    except (json.JSONDecodeError, AttributeError):
        queue_ok = both = False
    return {"right": both, "thumbs": "up" if both else "down", "score": 5 if both else 3 if queue_ok else 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--strong", type=Path, required=True, help="The better run (its test split is the traffic)."
    )
    ap.add_argument("--weak", type=Path, required=True, help="The weaker run.")
    ap.add_argument("--out", type=Path, default=Path("runs/feedback-sim"))
    ap.add_argument("--asks", type=int, default=2, help="How many users send each ticket.")
    ap.add_argument("--noise", type=float, default=0.1, help="Share of ratings with the wrong thumb.")
    ap.add_argument("--corrections", type=float, default=0.3, help="Share of wrong answers corrected.")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    settings = Settings(
        data_dir=args.out / "server",
        api_keys={KEY: TENANT},
        max_concurrent_generations=args.concurrency,
        max_queued_generations=4 * args.concurrency,
    )
    settings.ensure_dirs()
    store.init_db(store.engine_for(settings))
    strong, weak = f"ft:{BASE}:{TENANT}:strong", f"ft:{BASE}:{TENANT}:weak"
    register(settings, {strong: args.strong, weak: args.weak})
    port = 8765
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=3, timeout=600)

    def call(method: str, path: str, body: dict | None = None) -> dict:
        fn = client.post if method == "post" else client.get
        kw = {"body": body} if method == "post" else {}
        return fn(path, cast_to=httpx.Response, **kw).json()

    existing = {d["name"] for d in call("get", "/deployments")["data"]}
    arms = [{"model": strong, "weight": 1}, {"model": weak, "weight": 1}]
    if "tickets-prod" in existing:
        call("post", "/deployments/tickets-prod", {"arms": arms, "store": True})
    else:
        call("post", "/deployments", {"name": "tickets-prod", "arms": arms, "store": True})

    tickets = [json.loads(line) for line in (args.strong / "data" / "test.jsonl").read_text().splitlines()]
    asks = []
    for t, ticket in enumerate(tickets):
        prompt = [
            {"role": m["role"], "content": m["content"]}
            for m in ticket["messages"]
            if m["role"] != "assistant"
        ]
        reference = json.loads(next(m["content"] for m in ticket["messages"] if m["role"] == "assistant"))
        for k in range(args.asks):
            asks.append((f"user-{t}-{k}", prompt, reference))
    rng.shuffle(asks)

    def one(item) -> tuple[str, bool]:
        user, prompt, reference = item
        out = client.chat.completions.create(
            model="tickets-prod", messages=prompt, user=user, max_tokens=32, temperature=0
        )
        verdict = rate(out.choices[0].message.content or "", reference)
        thumbs = verdict["thumbs"]
        r = random.Random(
            f"{args.seed}:{user}"
        )  # per user, so that the result does not depend on thread order
        if r.random() < args.noise:
            thumbs = "down" if thumbs == "up" else "up"
        body = {"user": user, "thumbs": thumbs, "score": verdict["score"]}
        if not verdict["right"] and r.random() < args.corrections:
            body["correction"] = json.dumps(reference)
        call("post", f"/chat/completions/{out.id}/feedback", body)
        return out.model, verdict["right"]

    started = time.time()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(one, asks))
    took = time.time() - started
    truth = {
        m: sum(ok for mm, ok in results if mm == m) / max(1, sum(mm == m for mm, _ in results))
        for m in (strong, weak)
    }
    console.print(
        f"{len(asks)} requests in {took:.0f} s; true accuracy per arm: "
        + ", ".join(f"{m}: {v:.1%}" for m, v in truth.items())
    )

    stats = call("get", "/deployments/tickets-prod/stats")
    print_deployment_stats(stats, console)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures.json").write_text(
        json.dumps({"stats": stats, "true_accuracy": truth, "seconds": took}, indent=1)
    )

    datasets = call("post", "/feedback/datasets", {"deployment": "tickets-prod"})
    folder = args.out / "feedback"
    folder.mkdir(exist_ok=True)
    for kind, file_id in datasets["files"].items():
        (folder / f"{kind}.jsonl").write_text(client.files.content(file_id).text)
    (args.out / "datasets.json").write_text(json.dumps(datasets, indent=1))
    console.print(f"datasets from feedback → {folder}: {json.dumps(datasets['counts'])}")
    server.should_exit = True


if __name__ == "__main__":
    main()
