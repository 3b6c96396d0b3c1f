"""Serving throughput and latency under concurrency: `tuneforge serve` with the serial engine (one generation at
a time per model, the engine before batching), with the batched engine and with vLLM underneath (engine vllm),
vLLM's own OpenAI server, and llama.cpp's server on the same machine and model, all driven over HTTP by the
official `openai` async client from this process.

    python bench/serve_load.py                       # every engine, concurrency 1 4 16 32
    python bench/serve_load.py --engines batched --levels 1 4
    python bench/serve_load.py --engines vllm vllm-direct --vllm .venv-vllm/bin/python   # after `make vllm`

Requests: chat completions, greedy, streamed (time to first token and inter-token latency from the chunks),
prompts of mixed lengths (short questions to a ~300-token passage), max_tokens 64-128 (seeded), and for the
tuneforge engines the model of each request drawn in turn from the base and four LoRA adapters of it (random
adapters written by this script, rank 16 on every projection, as tuneforge trains them). vLLM's own server gets
the same mix (the adapters as --lora-modules). llama.cpp's server has no per-request adapter, so it answers every
request with the base model (one GGUF; it cannot do the mix).

Per engine and concurrency: aggregate completion tokens/s (tokens / wall time of the level), time to first
token p50/p99, inter-token latency p50/p99, and the server's peak memory (VmHWM, summed over the server's
processes: vLLM runs its engine core and worker as processes of their own). Results in
bench/results/serve_load.json; figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-bench-load-0001"
BASE = "smollm2-135m"
N_ADAPTERS = 4
PASSAGE = (
    "Support ticket. The customer writes that since the last update the invoice export to CSV stops halfway, "
    "that the totals in the dashboard no longer match the exported figures, and that two colleagues cannot "
    "log in with single sign-on although their accounts are active. They attach a screenshot of the error "
    "page, which shows a timeout after thirty seconds, and ask whether the nightly backup still runs, because "
    "the status page has said 'degraded' for three days. "
)
PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Explain in two sentences what a hash table is.",
    "Classify this ticket by queue and priority: my invoice is wrong and I was charged twice this month.",
    PASSAGE + "Summarise the ticket and name the queue it belongs to.",
    PASSAGE * 2 + "List every problem the customer reports.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: int) -> float | None:
    if len(xs) < 2:
        return round(xs[0] * 1000, 1) if xs else None
    return round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1] * 1000, 1)


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident memory of the server's processes (its session: it was started in a new one)."""
    total = 0
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3]) == pid:
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
    return round(total / 1024, 1) if total else None


# ------------------------------------------------------------------------------------------- set-up
def make_adapters(data: Path) -> list[str]:
    """Four random LoRA adapters of the base (B scaled down so the answers stay text), registered as alice's
    fine-tuned models in the server's database."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.jobs import store
    from tuneforge.jobs.store import FineTunedModel
    from tuneforge.recipes.runs import load_any
    from tuneforge.settings import Settings

    ids = []
    settings = Settings(data_dir=data)
    settings.ensure_dirs()
    db = store.engine_for(settings)
    store.init_db(db)
    sessions = store.session_factory(db)
    for i in range(N_ADAPTERS):
        lm = load_any(BASE)
        torch.manual_seed(i)
        cfg = LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            init_lora_weights=False,
        )
        peft = get_peft_model(lm.model, cfg)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.02)
        run = data / "runs" / f"adapter{i}"
        peft.save_pretrained(run / "adapter")
        lm.tokenizer.save_pretrained(run / "adapter")
        mid = f"ft:{BASE}:alice:load{i}"
        with store.transaction(sessions) as s:
            s.add(
                FineTunedModel(
                    id=mid,
                    owner="alice",
                    base=BASE,
                    job_id="-",
                    run_dir=str(run),
                    training_type="lora",
                    created_at=0,
                )
            )
        ids.append(mid)
    return ids


class Server:
    def __init__(self, cmd: list[str], env: dict, log: Path, url: str, probe: str):
        self.url, self.probe, self.log = url, probe, log
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # noqa: SIM115
        )

    def wait(self, timeout: float = 300) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.probe, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(f"the server did not start; see {self.log}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)


# vLLM's CPU build here: float32 as tuneforge serves, a 2 GiB KV cache (its default takes far more), the four
# adapters of rank 16 in one batch.
VLLM_OPTIONS = ["--dtype", "float32", "--max-model-len", "2048", "--max-loras", "4", "--max-lora-rank", "16"]
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2"}


def tuneforge_server(engine: str, data: Path, concurrency: int, vllm: str | None = None) -> Server:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TOKENIZERS_PARALLELISM="false")
    env.update(
        TUNEFORGE_DATA_DIR=str(data),
        TUNEFORGE_API_KEYS=f"{KEY}=alice",
        TUNEFORGE_BASE_MODELS=json.dumps({BASE: BASE}),
        TUNEFORGE_WORKERS="0",
        TUNEFORGE_ENGINE=engine,
        TUNEFORGE_MAX_CONCURRENT_GENERATIONS=str(max(concurrency, 32)),
        TUNEFORGE_MAX_QUEUED_GENERATIONS="64",
        TUNEFORGE_DEVICE="cpu",
        **VLLM_ENV,
    )
    if vllm:
        env.update(
            TUNEFORGE_VLLM_COMMAND=f"{vllm} -m vllm.entrypoints.openai.api_server",
            TUNEFORGE_VLLM_ARGS=" ".join(VLLM_OPTIONS),
        )
    cmd = [sys.executable, "-m", "tuneforge.cli", "serve", "--port", str(port), "--workers", "0"]
    url = f"http://127.0.0.1:{port}/v1"
    return Server(cmd, env, data / f"server-{engine}.log", url, f"{url}/models")


def vllm_server(data: Path, adapters: list[str], vllm: str) -> Server:
    """vLLM's own OpenAI server on the base's Hugging Face folder, the four adapters as its LoRA modules."""
    from tuneforge.models.load import ensure_converted
    from tuneforge.models.registry import resolve

    port = free_port()
    loras = [f"{mid}={data / 'runs' / f'adapter{i}' / 'adapter'}" for i, mid in enumerate(adapters)]
    cmd = [
        vllm, "-m", "vllm.entrypoints.openai.api_server", "--model", str(ensure_converted(resolve(BASE))),
        "--served-model-name", BASE, "--port", str(port), "--api-key", KEY, *VLLM_OPTIONS,
        "--enable-lora", "--lora-modules", *loras,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    return Server(cmd, dict(os.environ, **VLLM_ENV), data / "server-vllm-direct.log", url, f"{url}/models")


def base_gguf(data: Path, kind: str) -> Path:
    """The GGUF that ships with the base (Q4_1: tuneforge's float32 weights are these, dequantised), or the
    float32 weights tuneforge serves, written by tuneforge's own GGUF writer (the same numbers, 4x the bytes)."""
    from tuneforge.models.registry import resolve

    if kind == "q4_1":
        return resolve(BASE).bundled.locate()
    from tuneforge.export import gguf
    from tuneforge.models.load import unique_tensors
    from tuneforge.recipes.runs import load_any

    lm = load_any(BASE)
    out = data / "base-f32.gguf"
    gguf.write(unique_tensors(lm.model), lm.model.config, lm.tokenizer, out, qtype="f32", name=BASE)
    return out


def llamacpp_server(data: Path, kind: str) -> Server:
    gguf = base_gguf(data, kind)
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
        "--n_ctx", "2048", "--chat_format", "chatml", "--n_threads", str(os.cpu_count() or 2),
        # by default a new request interrupts the running one: queue them instead, as a server should
        "--interrupt_requests", "False",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    return Server(cmd, dict(os.environ), data / f"server-llamacpp-{kind}.log", url, f"{url}/models")


# -------------------------------------------------------------------------------------------- load
async def one(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    stamps: list[float] = []
    tokens = None
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {
        "ttft": stamps[0] - t0 if stamps else None,
        "itl": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "tokens": tokens if tokens is not None else len(stamps),
    }


async def level(url: str, models: list[str], concurrency: int, requests: int, seed: int) -> dict:
    rng = random.Random(seed)
    work = [
        (models[i % len(models)], PROMPTS[rng.randrange(len(PROMPTS))], rng.randint(64, 128))
        for i in range(requests)
    ]
    queue: asyncio.Queue = asyncio.Queue()
    for w in work:
        queue.put_nowait(w)
    results: list[dict] = []
    client = openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=1800)

    async def worker() -> None:
        while not queue.empty():
            results.append(await one(client, *queue.get_nowait()))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    itl = [x for r in results for x in r["itl"]]
    return {
        "concurrency": concurrency,
        "requests": requests,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_ms_p50": pct(ttft, 50),
        "ttft_ms_p99": pct(ttft, 99),
        "itl_ms_p50": pct(itl, 50),
        "itl_ms_p99": pct(itl, 99),
    }


def run_engine(name: str, server: Server, models: list[str], args) -> dict:
    server.wait()
    try:
        # warm up: load the model and every adapter once (not measured)
        asyncio.run(level(server.url, models, len(models), len(models), seed=99))
        levels = []
        for c in args.serial_levels if name == "serial" else args.levels:
            n = max(args.min_requests, c)
            r = asyncio.run(level(server.url, models, c, n, seed=c))
            print(f"{name:9s} c={c:<3d} {r['tokens_per_s']:7.1f} tok/s  ttft p50 {r['ttft_ms_p50']} p99 "
                  f"{r['ttft_ms_p99']} ms  itl p50 {r['itl_ms_p50']} p99 {r['itl_ms_p99']} ms", flush=True)  # fmt: skip
            levels.append(r)
        return {"models": len(models), "levels": levels, "peak_rss_mb": peak_rss_mb(server.proc.pid)}
    finally:
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--engines", nargs="+", default=["serial", "batched", "llamacpp-q4_1", "llamacpp-f32"],
        choices=["serial", "batched", "vllm", "vllm-direct", "llamacpp-q4_1", "llamacpp-f32"],
    )  # fmt: skip
    p.add_argument(
        "--vllm", default=str(REPO / ".venv-vllm" / "bin" / "python"),
        help="The Python of vLLM's environment (make vllm), for the engines vllm and vllm-direct.",
    )  # fmt: skip
    p.add_argument("--levels", nargs="+", type=int, default=[1, 4, 16, 32])
    p.add_argument(
        "--min-requests", type=int, default=8, help="Requests per level (at least the concurrency)."
    )
    p.add_argument(
        "--serial-levels", nargs="+", type=int, default=[1, 4, 16],
        help="The serial engine's levels (at 11 tokens/s, concurrency 32 alone takes 5 minutes).",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve_load.json")
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "src"))

    data = Path(tempfile.mkdtemp(prefix="tf-serve-load-"))
    adapters = make_adapters(data) if {"serial", "batched", "vllm", "vllm-direct"} & set(args.engines) else []
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "engines": {},
    }
    for name in args.engines:
        if name.startswith("llamacpp"):
            server, models = llamacpp_server(data, name.removeprefix("llamacpp-")), [BASE]
        elif name == "vllm-direct":
            server, models = vllm_server(data, adapters, args.vllm), [BASE, *adapters]
        else:
            vllm = args.vllm if name == "vllm" else None
            server, models = tuneforge_server(name, data, max(args.levels), vllm), [BASE, *adapters]
        results["engines"][name] = run_engine(name, server, models, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {args.out} (server logs in {data})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
