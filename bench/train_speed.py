"""Training speed and memory: tuneforge against TRL's SFTTrainer + PEFT, same model, data and hyperparameters.

    python bench/train_speed.py                       # every variant, results in bench/results/
    python bench/train_speed.py --only tuneforge      # one variant

Each variant runs in its own process (so its peak memory is its own): it trains LoRA (r=16, alpha=32, all linear
layers, no dropout) on the same alpaca rows from the peer data, with the same learning rate, schedule, batch size,
max length, clipping and seed, and reports

- real tokens per second: non-padding tokens of the training set (after truncation to max length) divided by
  the time spent in the training call (model loading and data preparation excluded);
- peak memory: the process's peak RSS on CPU (ru_maxrss), max allocated on GPU;
- final training loss, and a held-out loss computed afterwards by one shared function for every trained adapter
  (answer tokens of rows the runs never saw) — the check that every variant learned the same thing.

In the same run it measures the machine's matmul peak (fp32 and bf16) and reports model FLOPs utilisation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER = REPO.parent / "shared" / "peer-data" / "llamafactory" / "alpaca_en_demo.json"
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

VARIANTS = {
    "tuneforge": "tuneforge (defaults: bf16, fused RMSNorm/SwiGLU/attention/LoRA, target-only LM head, compile: auto)",
    "tuneforge_packed": "tuneforge with packing (block-diagonal attention, no padding)",
    "tuneforge_compiled": "tuneforge, train.compile: true, compile cache warm (every run after a machine's first)",
    "trl_default": "TRL SFTTrainer + PEFT, defaults",
    "trl_packing": "TRL SFTTrainer + PEFT, packing (bfd, padding-free)",
    "trl_padding_free": "TRL SFTTrainer + PEFT, padding-free without packing",
}
TRL_VARIANTS = [v for v in VARIANTS if v.startswith("trl")]


# --------------------------------------------------------------------------------------------- shared data
def rows(n: int, offset: int = 0) -> list[dict]:
    data = json.loads(PEER.read_text())[offset : offset + n]
    out = []
    for r in data:
        user = r["instruction"] + (("\n" + r["input"]) if r["input"] else "")
        out.append({"user": user, "assistant": r["output"]})
    return out


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------- children
def child_tuneforge(args: argparse.Namespace, packed: bool) -> dict:
    from tuneforge.config import apply_overrides
    from tuneforge.recipes.build import build_config
    from tuneforge.recipes.lm import FineTune

    work = Path(args.workdir)
    data = work / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": r["user"]},
                        {"role": "assistant", "content": r["assistant"]},
                    ]
                }
            )
            + "\n"
            for r in rows(args.rows)
        )
    )
    cfg = build_config(
        apply_overrides(
            {
                "run_dir": str(work / "run"),
                "seed": args.seed,
                "model": {"name": args.model, **({"attn_implementation": args.attn} if args.attn else {})},
                "data": {
                    "train": str(data),
                    "split": {"validation": 0, "test": 0},
                    "clean": {"dedupe": "none"},
                    "max_length": args.max_length,
                    "truncation": "truncate",
                },
                "method": {
                    "name": "lora",
                    "r": 16,
                    "alpha": 32,
                    "dropout": 0.0,
                    "target_modules": "all-linear",
                },
                "train": {
                    "learning_rate": args.lr,
                    "epochs": args.epochs,
                    "batch_size": args.batch,
                    "warmup_ratio": 0.0,
                    "scheduler": "linear",
                    "max_grad_norm": 1.0,
                    "packing": packed,
                    "log_every": 1,
                },
            },
            args.tf_set,
        )
    )
    ft = FineTune(cfg, overwrite=True)
    ft.setup()
    if args.estimate:
        # What `tuneforge estimate` says before the run, in a process of its own as that command is: its timing
        # steps would otherwise leave their allocations in the training process's peak.
        est = ft.estimate(timing=True)
        return {
            "estimated_peak_bytes": est.peak_bytes,
            "estimated_train_seconds": est.seconds_per_epoch * args.epochs if est.seconds_per_epoch else None,
        }
    real = sum(len(s) for s in ft.train_seqs)
    t0 = time.time()
    res = ft.loop.train()
    dt = time.time() - t0
    ft.loop.finish()
    losses = [r["loss"] for r in ft.run.read_metrics() if "loss" in r]
    return {
        "train_seconds": dt,
        "real_tokens": real * args.epochs,
        "steps": res.steps,
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "adapter": str(ft.run.root / "adapter"),
    }


def child_trl(args: argparse.Namespace, variant: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuneforge.models.load import ensure_converted
    from tuneforge.models.registry import resolve

    path = str(ensure_converted(resolve(args.model)))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # Conversational prompt/completion: TRL then computes the loss on the completion only, as tuneforge does.
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["user"]}],
                "completion": [{"role": "assistant", "content": r["assistant"]}],
            }
            for r in rows(args.rows)
        ]
    )
    extra = {}
    if variant == "trl_packing":
        extra = {"packing": True, "padding_free": True}
    elif variant == "trl_padding_free":
        extra = {"padding_free": True}
    work = Path(args.workdir)
    sft = SFTConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=args.batch,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=1.0,
        max_length=args.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(model=model, args=sft, train_dataset=ds, processing_class=tok, peft_config=lora)
    real = sum(len(x) for x in trainer.train_dataset["input_ids"])
    t0 = time.time()
    out = trainer.train()
    dt = time.time() - t0
    trainer.model.save_pretrained(str(work / "adapter"))
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        "train_seconds": dt,
        "real_tokens": real * args.epochs,
        "steps": out.global_step,
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),
        "adapter": str(work / "adapter"),
        "options": {"gradient_checkpointing": sft.gradient_checkpointing, "bf16": sft.bf16, **extra},
    }


def run_child(args: argparse.Namespace) -> None:
    variant = args.child
    if variant.startswith("tuneforge"):
        if variant == "tuneforge_compiled":
            args.tf_set = [*args.tf_set, "train.compile=true"]
        res = child_tuneforge(args, packed=variant == "tuneforge_packed")
        if args.estimate:
            Path(args.result).write_text(json.dumps(res))
            return
    else:
        res = child_trl(args, variant)
    res["peak_memory_bytes"] = peak_memory_bytes()
    res["tokens_per_s"] = res["real_tokens"] / res["train_seconds"]
    Path(args.result).write_text(json.dumps(res))


# ---------------------------------------------------------------------------------------------- parent side
def heldout_loss(args: argparse.Namespace, adapter: str) -> float:
    """Loss on answer tokens of unseen rows, by one function for every variant's adapter."""
    from peft import PeftModel

    from tuneforge.config import DataConfig
    from tuneforge.data.schema import Example, Message
    from tuneforge.eval.compare import validation_loss
    from tuneforge.models.load import LoadedModel, load_model

    base = load_model(args.model)
    model = PeftModel.from_pretrained(base.model, adapter)
    lm = LoadedModel(
        model=model,
        tokenizer=base.tokenizer,
        name=base.name,
        source=base.source,
        base_path=base.base_path,
        template_origin=base.template_origin,
        stop_token_ids=base.stop_token_ids,
    )
    exs = [
        Example("chat", [Message("user", r["user"]), Message("assistant", r["assistant"])])
        for r in rows(args.heldout, offset=args.rows)
    ]
    cfg = DataConfig(train="-", max_length=args.max_length, truncation="truncate")
    return validation_loss(lm, exs, cfg, adapters=True, labels=[], batch_size=8)["loss"]


def matmul_peak(dtype_name: str, seconds: float = 2.0) -> float:
    """Best GFLOP/s of large square matmuls in this dtype on this machine, right now."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    dev = device_name()
    best = 0.0
    for n in (1024, 2048, 3072) if dev == "cpu" else (4096, 8192):
        a = torch.randn(n, n, dtype=dtype, device=dev)
        b = torch.randn(n, n, dtype=dtype, device=dev)
        for _ in range(2):
            a @ b
        reps, t0 = 0, time.time()
        while time.time() - t0 < seconds / 3:
            a @ b
            reps += 1
        if dev == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.time() - t0) / 1e9)
    return best


def flops_per_token(args: argparse.Namespace, mean_len: float) -> dict[str, float]:
    """Model FLOPs per trained token, two conventions (N: parameters in matmuls, the tied LM head once):
    - "6N": PaLM's model FLOPs (forward 2N, backward 4N) plus 12 L d T for attention — the usual MFU basis,
      though it counts weight gradients that LoRA never needs;
    - "4N": what LoRA needs at least — forward 2N and the backward input gradients 2N, plus 8 L d T attention
      (adapter matmuls are under 4% of N at r=16 and are left out)."""
    from transformers import AutoConfig

    from tuneforge.models.load import ensure_converted
    from tuneforge.models.registry import resolve

    c = AutoConfig.from_pretrained(str(ensure_converted(resolve(args.model))))
    d, L, ff, v = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    kv = d * c.num_key_value_heads // c.num_attention_heads
    n = L * (d * d * 2 + d * kv * 2 + 3 * d * ff) + v * d
    return {"6N": 6 * n + 12 * L * d * mean_len, "4N": 4 * n + 8 * L * d * mean_len}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=96, help="alpaca rows to train on")
    p.add_argument("--heldout", type=int, default=32, help="unseen rows for the shared held-out loss")
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn", default=None, help="tuneforge attention kernel override (auto, sdpa, eager)")
    p.add_argument(
        "--only", default=",".join(VARIANTS), help="comma-separated variants: " + ", ".join(VARIANTS)
    )
    p.add_argument(
        "--tf-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tuneforge config override for the tuneforge variants (repeatable), to measure one technique",
    )
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--estimate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args)
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    common = [
        "--model",
        args.model,
        "--rows",
        str(args.rows),
        "--epochs",
        str(args.epochs),
        "--batch",
        str(args.batch),
        "--max-length",
        str(args.max_length),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        *(["--attn", args.attn] if args.attn else []),
        *[a for kv in args.tf_set for a in ("--tf-set", kv)],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}
    for variant in args.only.split(","):
        work = out / "work" / variant
        work.mkdir(parents=True, exist_ok=True)
        result = work / "result.json"
        print(f"== {variant}: {VARIANTS[variant]}", flush=True)

        cmd = [sys.executable, __file__, "--child", variant, "--workdir", str(work), "--result", str(result)]
        cmd += common
        estimate = {}
        if variant.startswith("tuneforge"):
            r = subprocess.run([*cmd, "--estimate"], env=env, capture_output=True, text=True)
            if r.returncode == 0:
                estimate = json.loads(result.read_text())
        if variant == "tuneforge_compiled":
            # An untimed first run fills inductor's cache, as any first run on a machine does.
            subprocess.run(cmd, env=env, capture_output=True, text=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:])
            results[variant] = {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
            continue
        results[variant] = {**json.loads(result.read_text()), **estimate}
        results[variant]["heldout_loss"] = heldout_loss(args, results[variant]["adapter"])
        v = results[variant]
        print(
            f"   {v['tokens_per_s']:.1f} tok/s, peak {v['peak_memory_bytes'] / 2**30:.2f} GiB, "
            f"final loss {v['final_loss']:.4f}, held-out loss {v['heldout_loss']:.4f}",
            flush=True,
        )

    peaks = {"fp32": matmul_peak("fp32"), "bf16": matmul_peak("bf16")}
    summary = report(args, results, peaks)
    (out / f"train_speed_{device_name()}.json").write_text(json.dumps(summary, indent=1))
    (out / f"train_speed_{device_name()}.md").write_text(summary["markdown"])
    print(summary["markdown"])


def report(args: argparse.Namespace, results: dict[str, dict], peaks: dict[str, float]) -> dict:
    ok = {k: v for k, v in results.items() if "error" not in v}
    mean_len = 0.0
    if "tuneforge" in ok:
        mean_len = ok["tuneforge"]["real_tokens"] / args.epochs / args.rows
    fpt = flops_per_token(args, mean_len or 200)
    peak = peaks["bf16"] * 1e9
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {device_name()}; "
        f"matmul peak fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s (measured in this run).",
        f"Work: {args.model}, LoRA r=16 all linear layers, {args.rows} alpaca rows, {args.epochs:g} epoch(s), "
        f"batch {args.batch}, max length {args.max_length}, lr {args.lr:g}.",
        f"MFU against the bf16 peak, with {fpt['6N'] / 1e9:.2f} GFLOP per token (6N) and "
        f"{fpt['4N'] / 1e9:.2f} (4N, what LoRA needs).",
        "",
        "| variant | real tokens/s | peak memory | final train loss | held-out loss | MFU 6N | MFU 4N |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, v in results.items():
        if "error" in v:
            lines.append(f"| {k} | failed: {v['error'][:80]} | | | | | |")
            continue
        v["mfu_6n"] = v["tokens_per_s"] * fpt["6N"] / peak
        v["mfu_4n"] = v["tokens_per_s"] * fpt["4N"] / peak
        lines.append(
            f"| {k} | {v['tokens_per_s']:.1f} | {v['peak_memory_bytes'] / 2**30:.2f} GiB | "
            f"{v['final_loss']:.4f} | {v['heldout_loss']:.4f} | {100 * v['mfu_6n']:.1f}% | "
            f"{100 * v['mfu_4n']:.1f}% |"
        )
    est_lines = []
    for k, v in ok.items():
        if v.get("estimated_peak_bytes"):
            pm = v["estimated_peak_bytes"] / v["peak_memory_bytes"] - 1
            row = f"| {k} | {gib(v['estimated_peak_bytes'])} | {gib(v['peak_memory_bytes'])} | {100 * pm:+.0f}% |"
            if v.get("estimated_train_seconds"):
                pt = v["estimated_train_seconds"] / v["train_seconds"] - 1
                row += (
                    f" {v['estimated_train_seconds']:.0f} s | {v['train_seconds']:.0f} s | {100 * pt:+.0f}% |"
                )
            else:
                row += " | | |"
            est_lines.append(row)
    if est_lines:
        lines += [
            "",
            "| estimator (`tuneforge estimate`) | predicted peak | measured peak | error | predicted time | "
            "measured time | error |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *est_lines,
        ]
    ratios = {
        f"{t} vs {k}": {
            "speed": us["tokens_per_s"] / v["tokens_per_s"],
            "memory": us["peak_memory_bytes"] / v["peak_memory_bytes"],
        }
        for t, us in ok.items()
        if t.startswith("tuneforge")
        for k, v in ok.items()
        if k.startswith("trl")
    }
    if ratios:
        lines += ["", "| ratio | speed | memory |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {r['speed']:.2f}x | {r['memory']:.2f}x |" for k, r in ratios.items()]
    return {
        "results": results,
        "peaks_gflops": peaks,
        "flops_per_token": fpt,
        "ratios": ratios,
        "markdown": "\n".join(lines) + "\n",
    }


if __name__ == "__main__":
    main()
