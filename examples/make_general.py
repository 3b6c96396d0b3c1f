"""Build tuneforge's bundled general-knowledge sets, used to measure and to mitigate catastrophic forgetting.

    python examples/make_general.py [PATH_TO_LLAMAFACTORY_DATA]

Source: `alpaca_en_demo.json` from hiyouga/LLaMA-Factory's `data/` folder (Apache-2.0; a copy with its licence
is in ../shared/peer-data/llamafactory/). Records whose instruction + input + output run under 500 characters
are kept (short general answers: cheap to score on CPU and shorter than any sensible `data.max_length`),
shuffled with a fixed seed and cut into two disjoint files in OpenAI chat format:

- src/tuneforge/data/bundled/general-eval.jsonl   120 records: the held-out set on which every report measures
  forgetting (`eval.general`); never trained on.
- src/tuneforge/data/bundled/general-train.jsonl  300 records: the general data that `forgetting.replay` mixes
  into training and on which `forgetting.ewc` estimates its Fisher information (`forgetting.data`).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "src" / "tuneforge" / "data" / "bundled"
N_EVAL, N_TRAIN, MAX_CHARS, SEED = 120, 300, 500, 0


def main(src_dir: Path) -> None:
    rows = json.loads((src_dir / "alpaca_en_demo.json").read_text())
    keep = [
        r
        for r in rows
        if r["output"].strip() and len(r["instruction"]) + len(r["input"]) + len(r["output"]) < MAX_CHARS
    ]
    random.Random(SEED).shuffle(keep)
    if len(keep) < N_EVAL + N_TRAIN:
        sys.exit(f"only {len(keep)} short records in {src_dir}")

    def chat(r: dict) -> dict:
        ask = r["instruction"].strip() + (f"\n\n{r['input'].strip()}" if r["input"].strip() else "")
        return {
            "messages": [
                {"role": "user", "content": ask},
                {"role": "assistant", "content": r["output"].strip()},
            ]
        }

    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("general-eval", keep[:N_EVAL]), ("general-train", keep[N_EVAL : N_EVAL + N_TRAIN])):
        path = OUT / f"{name}.jsonl"
        path.write_text("".join(json.dumps(chat(r), ensure_ascii=False) + "\n" for r in part))
        print(f"wrote {len(part)} records to {path}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "peer-data" / "llamafactory"
    )
