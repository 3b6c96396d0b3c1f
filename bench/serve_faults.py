"""The service under overload and faults: `tuneforge serve` and `tuneforge worker` as real processes, scripted.

    python bench/serve_faults.py            # the full run; results in bench/results/serve_faults.json
    python bench/serve_faults.py --quick    # a smoke version: 1 wave, 1 job of 4 steps (results in its data dir)

1. Overload: waves of 3x the admission limit of concurrent chat completions on the base model (a third streamed and
   dropped after the first chunk), while the other tenant polls GET /v1/files: counts of 200 / 429 (with
   Retry-After) / other 4xx / 5xx / connection errors, and that tenant's latency (p50, p95; idle baseline too).
2. Faults: two fine-tuning jobs; `kill -9` of the worker's process group once a job has a checkpoint, a new
   worker; then `kill -9` of the server and a restart on the same data directory. Reports jobs lost (not
   succeeded, or events / checkpoints seen before the kills missing afterwards), the time to recover, and whether
   the killed job resumed from its checkpoint (a "Resumed from step-N" event, every training step logged once).

Exits 1 on any server error (5xx, an error event in a stream), lost job, request that got no answer (connection
error, timeout), or if the service serves nothing after the load (slots held by dropped streams). Only the public
API is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
KEYS = {"sk-bench-alice-0001": "alice", "sk-bench-bob-00002": "bob"}
ALICE, BOB = KEYS
MODEL = "smollm2-135m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float | None:
    return round(statistics.quantiles(xs, n=100)[q - 1] * 1000, 1) if len(xs) >= 2 else None


class Service:
    """The server and one worker, each in its own process group so that a SIGKILL takes the whole group."""

    def __init__(self, args, data: Path):
        self.data, self.port = data, free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TOKENIZERS_PARALLELISM="false")
        self.env.update(
            TUNEFORGE_DATA_DIR=str(data),
            TUNEFORGE_API_KEYS=",".join(f"{k}={v}" for k, v in KEYS.items()),
            TUNEFORGE_BASE_MODELS=json.dumps({MODEL: MODEL}),
            TUNEFORGE_WORKERS="0",
            TUNEFORGE_MAX_CONCURRENT_GENERATIONS=str(args.concurrent),
            TUNEFORGE_MAX_QUEUED_GENERATIONS=str(args.queued),
            # A lost worker's job waits for its lease to run out (60 s by default): shorter, to keep runs short.
            TUNEFORGE_LEASE_S=str(args.lease_s),
            TUNEFORGE_HEARTBEAT_S=str(args.lease_s / 5),
            TUNEFORGE_POLL_S="0.5",
        )
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.workers = 0

    def _spawn(self, verb: str, log: str, *extra: str) -> subprocess.Popen:
        out = open(self.data / log, "ab")  # noqa: SIM115 - lives as long as the process
        cmd = [sys.executable, "-m", "tuneforge.cli", verb, *extra]
        return subprocess.Popen(
            cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_server(self) -> float:
        """Starts the server; seconds until GET /v1/models first answers 200."""
        t0 = time.monotonic()
        self.server = self._spawn("serve", "server.log", "--port", str(self.port), "--workers", "0")
        while time.monotonic() - t0 < 120:
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"{self.url}/models", headers={"Authorization": f"Bearer {BOB}"})
                if answer.status_code == 200:
                    return time.monotonic() - t0
            if self.server.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"the server did not start; see {self.data / 'server.log'}")

    def start_worker(self) -> None:
        self.workers += 1
        self.worker = self._spawn("worker", f"worker{self.workers}.log")

    @staticmethod
    def kill(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
        """Signals the process's whole group (a worker's training children die with it)."""
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a SIGTERM not obeyed in time
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def stop(self) -> None:
        self.kill(self.worker, signal.SIGTERM)
        self.kill(self.server, signal.SIGTERM)


# ------------------------------------------------------------------------------------------------ overload
async def overload(svc: Service, args) -> dict:
    alice = openai.AsyncOpenAI(base_url=svc.url, api_key=ALICE, max_retries=0, timeout=args.request_timeout)
    bob = openai.AsyncOpenAI(base_url=svc.url, api_key=BOB, max_retries=0, timeout=args.request_timeout)
    counts, errors, lat = Counter(), [], []
    msg = [{"role": "user", "content": "Tell me about the sea."}]
    chat = dict(model=MODEL, max_tokens=args.max_tokens, messages=msg)

    def failed(e: Exception, who: str) -> None:
        code = getattr(e, "status_code", None)
        kind = "5xx" if code is None or code >= 500 else "other_4xx"
        if isinstance(e, openai.APIConnectionError):  # timeouts too
            kind = "connection_errors"
        counts[kind if who == "alice" else f"other_tenant_{kind}"] += 1
        errors.append(f"{who}: {type(e).__name__} {code or ''} {str(e)[:200]}")

    async def one(i: int) -> None:
        counts["sent"] += 1
        try:
            if i % 3 == 0:  # streamed, and the client goes away after the first chunk
                stream = await alice.chat.completions.create(**chat, stream=True)
                async for _ in stream:
                    break
                await stream.close()
                counts["disconnected_after_first_chunk"] += 1
            else:
                await alice.chat.completions.create(**chat)
            counts["200"] += 1
        except openai.RateLimitError as e:
            counts["429"] += 1
            counts["429_with_retry_after"] += bool(e.response.headers.get("retry-after"))
        except openai.APIError as e:  # status errors, connection errors, an error event inside a stream
            failed(e, "alice")

    async def poll_files(until: asyncio.Event, into: list[float]) -> None:
        while not until.is_set():
            t = time.perf_counter()
            try:
                await bob.files.list()
                into.append(time.perf_counter() - t)
            except openai.APIError as e:
                failed(e, "bob")
            await asyncio.sleep(0.05)

    idle, done = [], asyncio.Event()
    await bob.files.create(file=("notes.jsonl", b'{"text": "x"}\n'), purpose="fine-tune")  # something to list
    for _ in range(20):  # the other tenant's latency with nothing else running
        t = time.perf_counter()
        await bob.files.list()
        idle.append(time.perf_counter() - t)
    t = time.perf_counter()
    # The first answer loads the base model: the waves then measure serving alone.
    await alice.chat.completions.create(**chat)
    warmup = time.perf_counter() - t
    poller = asyncio.create_task(poll_files(done, lat))
    t = time.perf_counter()
    for _ in range(args.waves):
        await asyncio.gather(*(one(i) for i in range(args.n)))
    elapsed = time.perf_counter() - t
    done.set()
    await poller
    try:  # the dropped streams must have freed their slots: one more request is served
        await alice.chat.completions.create(**chat)
        served_after = True
    except openai.APIError as e:
        served_after = False
        failed(e, "alice")
    return dict(
        counts=dict(counts), waves=args.waves, per_wave=args.n, seconds=round(elapsed, 1),
        model_load_and_first_answer_s=round(warmup, 1), served_after_load=served_after, errors=errors[:20],
        other_tenant_get_files_ms=dict(
            calls=len(lat), p50=pct(lat, 50), p95=pct(lat, 95), max=round(max(lat) * 1000, 1) if lat else None,
            idle_p50=pct(idle, 50), idle_p95=pct(idle, 95),
        ),
    )  # fmt: skip


# -------------------------------------------------------------------------------------------------- faults
TERMINAL = ("succeeded", "failed", "cancelled")


def faults(svc: Service, args) -> dict:
    api = openai.OpenAI(base_url=svc.url, api_key=ALICE, max_retries=3, timeout=60)
    lines = (REPO / "examples/data/tickets.jsonl").read_text().splitlines()[: args.records]
    (svc.data / "train.jsonl").write_text("\n".join(lines) + "\n")
    fid = api.files.create(file=(svc.data / "train.jsonl").open("rb"), purpose="fine-tune").id
    # A fixed learning rate (no range test) and no validation split (early stopping must not end a job before the
    # kill); max_steps bounds each job to a few minutes of CPU.
    hp = dict(n_epochs=2, batch_size=4, learning_rate_multiplier=1, lora_rank=8, max_length=256)
    hp.update(validation_split=0, max_steps=args.steps, save_every=args.save_every)
    method = {"type": "supervised", "supervised": {"hyperparameters": hp}}

    def create(i: int) -> str:
        return api.fine_tuning.jobs.create(
            model=MODEL, training_file=fid, suffix=f"faults{i}", seed=i, method=method
        ).id

    def wait(cond, what: str, every: float = 0.2):
        deadline = time.monotonic() + args.job_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(openai.APIConnectionError):  # the server may be down for a moment
                if value := cond():
                    return value
            time.sleep(every)
        raise SystemExit(f"timed out after {args.job_timeout:.0f} s waiting for {what} (logs in {svc.data})")

    def get(job_id: str):
        return api.fine_tuning.jobs.retrieve(job_id)

    def events(job_id: str) -> list:
        return list(api.fine_tuning.jobs.list_events(job_id, limit=100))  # iterating pages through them all

    def checkpoints(job_id: str) -> list:
        return list(api.fine_tuning.jobs.checkpoints.list(job_id, limit=100))

    seen: dict[str, set[str]] = {}  # ids of every event and checkpoint listed before a kill, per job

    def remember(job_id: str) -> None:
        seen.setdefault(job_id, set()).update(x.id for x in events(job_id) + checkpoints(job_id))

    victim = create(0)

    def checkpointed() -> bool:  # running, and past its last checkpoint: a kill now loses some steps
        job, ckpts = get(victim), checkpoints(victim)
        return job.status == "running" and bool(ckpts) and job.step > max(c.step_number for c in ckpts)

    wait(checkpointed, "a running job with a checkpoint")
    remember(victim)
    t_kill, killed_step = time.monotonic(), get(victim).step
    svc.kill(svc.worker)  # SIGKILL to the worker's whole group, in the middle of a training step
    svc.start_worker()  # as a supervisor would; it takes the job up once the dead worker's lease has run out
    wait(lambda: get(victim).attempts >= 2, "the job to be taken up again")
    t_taken = time.monotonic() - t_kill
    wait(
        lambda: any(e.message.startswith("Resumed from") for e in events(victim)), "the checkpoint", every=0.5
    )
    t_resumed = time.monotonic() - t_kill
    wait(lambda: get(victim).step > killed_step, "the job's next step")
    t_step = time.monotonic() - t_kill
    # The other jobs only now: queued before the kill, the new worker would take them first (the oldest job no live
    # lease holds) and the killed one would wait behind them, which measures their length, not the recovery.
    jobs = [victim] + [create(i) for i in range(1, args.jobs)]
    for j in jobs:
        remember(j)
    steps_at_server_kill = {j: get(j).step for j in jobs}
    # A server crash while a job trains and another waits: the worker needs only the database.
    svc.kill(svc.server)
    t_server = svc.start_server()
    steps_when_back = {j: get(j).step for j in jobs}
    wait(lambda: all(get(j).status in TERMINAL for j in jobs), "every job to end", every=1.0)

    report = []
    for j in jobs:
        job, listed, ckpts = get(j), events(j), checkpoints(j)
        metrics = [e.data or {} for e in listed if e.type == "metrics"]
        steps = sorted(int(d["step"]) for d in metrics if "train_loss" in d and "valid_loss" not in d)
        resumed = [int(m[1]) for e in listed if (m := re.search(r"Resumed from step-(\d+)", e.message))]
        answer = None
        if job.fine_tuned_model:  # the tuned model answers through the restarted server
            msg = [{"role": "user", "content": "My invoice is wrong"}]
            answer = api.chat.completions.create(model=job.fine_tuned_model, max_tokens=4, messages=msg)
            answer = answer.choices[0].message.content
        report.append(
            dict(
                id=j, status=job.status, error=job.error.message if job.error else None, killed=j == victim,
                attempts=job.attempts, failures=job.failures, total_steps=job.total_steps, resumed_from_step=resumed,
                steps_each_once=steps == list(range(1, (job.total_steps or 0) + 1)), checkpoints=len(ckpts),
                missing_since_kills=len(seen[j] - {x.id for x in listed + ckpts}), tuned_model_answer=answer,
            )
        )  # fmt: skip
    lost = [r["id"] for r in report if r["status"] != "succeeded" or r["missing_since_kills"]]
    v = report[0]
    return dict(
        jobs=report, jobs_lost=len(lost), lost_ids=lost, step_at_worker_kill=killed_step,
        resumed_from_checkpoint=bool(v["resumed_from_step"]) and min(v["resumed_from_step"]) > 0
        and v["steps_each_once"], lease_s=args.lease_s,
        worker_kill_to_job_taken_up_s=round(t_taken, 1), worker_kill_to_checkpoint_loaded_s=round(t_resumed, 1),
        worker_kill_to_next_step_s=round(t_step, 1),
        server_kill_to_first_200_models_s=round(t_server, 1),
        steps_at_server_kill=steps_at_server_kill, steps_when_server_back=steps_when_back,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- main
def log_errors(path: Path, limit: int = 40) -> list[str]:
    """The lines of a log that explain a failure: tracebacks' last lines, ERROR lines, 5xx access lines."""
    if not path.exists():
        return []
    pat = re.compile(r'ERROR|CRITICAL|Traceback|^\w*(Error|Exception)\b|" 5\d\d ')
    return [ln[:300] for ln in path.read_text(errors="replace").splitlines() if pat.search(ln)][:limit]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    return f"{os.cpu_count()}-core {cpu}, {platform.system()} {platform.release()}"


def table(res: dict) -> str:
    o, f = res["overload"], res["faults"]
    n, lat = Counter(o["counts"]), o["other_tenant_get_files_ms"]
    rows = [
        ("chat requests sent (waves x concurrent)", f"{n['sent']} ({o['waves']} x {o['per_wave']})"),
        ("answered 200 (of them streams dropped after chunk 1)", f"{n['200']} ({n['disconnected_after_first_chunk']})"),
        ("429 (with Retry-After)", f"{n['429']} ({n['429_with_retry_after']})"),
        ("other 4xx / 5xx / connection errors", f"{n['other_4xx']} / {n['5xx']} / {n['connection_errors']}"),
        ("a request served after the load", o["served_after_load"]),
        ("other tenant GET /v1/files p50 / p95 / max, ms", f"{lat['p50']} / {lat['p95']} / {lat['max']}"),
        ("  the same on the idle server, p50 / p95, ms", f"{lat['idle_p50']} / {lat['idle_p95']}"),
        ("  its calls, 5xx, connection errors", f"{lat['calls']}, {n['other_tenant_5xx']}, "
         f"{n['other_tenant_connection_errors']}"),
        ("jobs lost", f"{f['jobs_lost']} of {len(f['jobs'])}"),
        ("killed job resumed from its checkpoint", f"{f['resumed_from_checkpoint']} "
         f"(killed at step {f['step_at_worker_kill']}, resumed from step-{f['jobs'][0]['resumed_from_step']})"),
        (f"worker kill -> job taken up again (lease {f['lease_s']:g} s)", f"{f['worker_kill_to_job_taken_up_s']} s"),
        ("worker kill -> model and checkpoint loaded", f"{f['worker_kill_to_checkpoint_loaded_s']} s"),
        ("worker kill -> the job's next step", f"{f['worker_kill_to_next_step_s']} s"),
        ("server kill -> first 200 of GET /v1/models", f"{f['server_kill_to_first_200_models_s']} s"),
    ]  # fmt: skip
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke version: 1 wave, 1 job of 4 steps")
    ap.add_argument("--concurrent", type=int, default=2, help="TUNEFORGE_MAX_CONCURRENT_GENERATIONS (2)")
    ap.add_argument("--queued", type=int, default=4, help="TUNEFORGE_MAX_QUEUED_GENERATIONS (4)")
    ap.add_argument("--n", type=int, help="concurrent chat requests per wave (default: 3x admission limit)")
    ap.add_argument("--waves", type=int, default=3, help="waves of concurrent requests (3)")
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each chat request (16)")
    ap.add_argument("--jobs", type=int, default=2, help="fine-tuning jobs (2)")
    ap.add_argument("--records", type=int, default=60, help="records of examples/data/tickets.jsonl (60)")
    ap.add_argument("--steps", type=int, default=12, help="max_steps of each job (12)")
    ap.add_argument("--save-every", type=int, default=3, help="checkpoint every N steps (3)")
    ap.add_argument("--lease-s", type=float, default=10, help="TUNEFORGE_LEASE_S (10; the default is 60)")
    ap.add_argument("--request-timeout", type=float, default=120, help="client timeout per request, s (120)")
    ap.add_argument(
        "--job-timeout", type=float, default=900, help="longest wait for a job's progress (900 s)"
    )
    ap.add_argument(
        "--data-dir", type=Path, help="the service's data directory (default: a new temporary one)"
    )
    ap.add_argument("--out", type=Path, help="results JSON (default: bench/results/serve_faults.json; with --quick: "
                    "in the data directory)")  # fmt: skip
    args = ap.parse_args()
    if args.quick:
        args.waves, args.jobs, args.records, args.steps, args.save_every, args.lease_s = 1, 1, 20, 4, 1, 5
    args.n = args.n or 3 * (args.concurrent + args.queued)
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="tf-faults-"))
    data.mkdir(parents=True, exist_ok=True)
    out = args.out or (data / "serve_faults.json" if args.quick else REPO / "bench/results/serve_faults.json")

    svc = Service(args, data)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        first_start = svc.start_server()
        svc.start_worker()
        print(f"server up in {first_start:.1f} s on {svc.url}; logs in {data}", flush=True)
        load = asyncio.run(overload(svc, args))
        print(f"overload done: {load['counts']}", flush=True)
        jobs = faults(svc, args)
    finally:
        svc.stop()
    logs = {p.name: log_errors(p) for p in sorted(data.glob("*.log"))}
    res = dict(
        date=started, machine=machine(), quick=args.quick, data_dir=str(data), server_first_start_s=first_start,
        settings={k: v for k, v in vars(args).items() if k not in ("data_dir", "out")},
        overload=load, faults=jobs, log_errors={k: v for k, v in logs.items() if v},
    )  # fmt: skip
    c = load["counts"]
    server_errors = c.get("5xx", 0) + c.get("other_tenant_5xx", 0)
    unanswered = c.get("connection_errors", 0) + c.get("other_tenant_connection_errors", 0)
    res["ok"] = not (server_errors or unanswered or jobs["jobs_lost"]) and load["served_after_load"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(table(res))
    for name, lines in res["log_errors"].items():
        print(f"\n{name}:\n  " + "\n  ".join(lines))
    verdict = "OK" if res["ok"] else "FAILED"
    print(f"\n{verdict}: {server_errors} server errors, {unanswered} unanswered, {jobs['jobs_lost']} jobs lost, "
          f"served after the load: {load['served_after_load']}; results in {out}")  # fmt: skip
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
