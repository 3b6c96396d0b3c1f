"""GRPO vs more SFT on the ticket task, at the same training time (issue: reinforcement from verifiable rewards).

    .venv/bin/python bench/grpo_tickets.py --seeds 0 1            # both arms per seed, one run after another
    .venv/bin/python bench/grpo_tickets.py --table                # the table from bench/results/grpo.jsonl

Per seed, one after the other in their own processes:
- grpo: examples/grpo.yaml — an SFT stage of 20 steps (the demo trains 84), then 20 GRPO steps rewarding
  field_match [queue, priority] (+ 0.25 json_valid), 4 answers per ticket. Both stages are scored on the test
  split; the GRPO stage's "base" is the SFT stage's result, so one run gives SFT-only and SFT + GRPO.
- more_sft: the same LoRA SFT (examples/tickets-lora.yaml, the same seed and split, zero-shot evaluation as
  grpo.yaml) for 20 + K steps, K being the GRPO stage's training seconds at the SFT stage's seconds per step: the
  GRPO stage's time spent on more SFT steps instead.
The score is strict exact match of the JSON answer on the test split (90 tickets), greedy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "grpo.jsonl"
SFT_STEPS = 20


def tuneforge(*args: str, log: Path) -> None:
    t0 = time.time()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "tuneforge.cli", *args], cwd=REPO, stdout=f, stderr=f)
    if code:
        sys.exit(f"{' '.join(args)} failed ({code}); see {log}")
    print(f"  {args[1]} done in {time.time() - t0:.0f} s", flush=True)


def score(run: Path) -> dict:
    report = json.loads((run / "report.json").read_text())
    out = {v["key"]: v["metrics"].get("exact_match") for v in report["variants"]}
    done = json.loads((run / "train_done.json").read_text())
    return {"base": out.get("base"), "tuned": out.get("tuned"), "steps": done["steps"], "seconds": done["train_seconds"]}


def run_seed(seed: int, work: Path) -> dict:
    grpo = work / f"grpo-s{seed}"
    tuneforge("train", "examples/grpo.yaml", f"--set=seed={seed}", f"--set=run_dir={grpo}", "--overwrite",
              log=work / f"grpo-s{seed}.log")
    sft, rl = score(grpo / "stage-1-format"), score(grpo / "stage-2-reinforce")
    extra = round(rl["seconds"] / (sft["seconds"] / sft["steps"]))
    more = work / f"more-sft-s{seed}"
    tuneforge(
        "train", "examples/tickets-lora.yaml", f"--set=seed={seed}", f"--set=run_dir={more}", "--overwrite",
        f"--set=train.max_steps={SFT_STEPS + extra}", "--set=train.learning_rate=1.5e-3", "--set=train.eval_every=10",
        "--set=eval.few_shot=0", log=work / f"more-sft-s{seed}.log",
    )
    m = score(more)
    row = {
        "seed": seed,
        "base": sft["base"],
        "sft": sft["tuned"],
        "sft_steps": sft["steps"],
        "sft_seconds": sft["seconds"],
        "grpo": rl["tuned"],
        "grpo_steps": rl["steps"],
        "grpo_seconds": rl["seconds"],
        "more_sft": m["tuned"],
        "more_sft_steps": m["steps"],
        "more_sft_seconds": m["seconds"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| seed | base | SFT 20 steps | + GRPO (steps, s) | more SFT instead (steps, s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['base']:.1f} | {r['sft']:.1f} | {r['grpo']:.1f} ({r['grpo_steps']}, "
            f"{r['grpo_seconds']:.0f}) | {r['more_sft']:.1f} ({r['more_sft_steps']}, {r['more_sft_seconds']:.0f}) |"
        )
    if rows:
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("sft", "grpo", "more_sft")}
        lines.append(f"| mean | | {mean['sft']:.1f} | {mean['grpo']:.1f} | {mean['more_sft']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--work", type=Path, default=Path("/tmp/tuneforge-grpo-bench"))
    ap.add_argument("--table", action="store_true", help="print the table of bench/results/grpo.jsonl")
    a = ap.parse_args()
    if not a.table:
        a.work.mkdir(parents=True, exist_ok=True)
        for s in a.seeds:
            print(f"seed {s}", flush=True)
            run_seed(s, a.work)
    rows = [json.loads(x) for x in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    print(table(rows))


if __name__ == "__main__":
    main()
