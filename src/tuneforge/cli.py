"""The `tuneforge` command: one verb per job; each parses its options, calls one function (tuneforge.api, the
experiments, the service) and prints.

Every failure a user can cause ends as one line on stderr — what went wrong and what to do — and exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from tuneforge.config import DEFAULT_MODEL
from tuneforge.errors import TuneforgeError

app = typer.Typer(
    name="tuneforge",
    help="Fine-tune open LLMs on your own data and serve them on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Look at and prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: --set train.learning_rate=1e-4 (repeatable)."),
]

# sweep and kfold on Ray: their trials or folds as Ray tasks
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help='Run the trials (sweep) or folds (kfold) as Ray tasks on this cluster ("127.0.0.1:6379", '
        '"ray://head:10001"; "local": start one here). Sweep trials are then not pruned half-way.',
    ),
]
RayParallelOpt = Annotated[
    int,
    typer.Option(
        min=1, help="Tasks at once: sweep trials in flight; a local Ray instance is sized for this many."
    ),
]
RayCpusOpt = Annotated[float, typer.Option(min=0.1, help="CPUs per task on Ray.")]
RayGpusOpt = Annotated[float, typer.Option(min=0, help="GPUs per task on Ray (0: none).")]


def _ray_tasks(address: str | None, parallel: int, cpus: float, gpus: float):
    from tuneforge.experiments.common import RayTrials

    return (
        None if address is None else RayTrials(None if address == "local" else address, parallel, cpus, gpus)
    )


def _console():
    from tuneforge.progress import console

    return console


# ------------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    run_dir: Annotated[str, typer.Option(help="Where the demo run is written.")] = "runs/demo",
    set_: SetOpt = None,
    fresh: Annotated[bool, typer.Option(help="Replace an earlier demo run instead of refusing.")] = True,
) -> None:
    """Fine-tune SmolLM2-135M with LoRA on the bundled support-ticket dataset and show before → after."""
    from tuneforge import api

    cfg_path = REPO_EXAMPLES / "tickets-lora.yaml"
    if not cfg_path.is_file():
        raise TuneforgeError(
            f"demo config {cfg_path} not found", "run the demo from a tuneforge source checkout"
        )
    os.chdir(REPO_EXAMPLES.parent)  # the config's data paths are relative to the repository
    cfg = api.load_config(cfg_path, [f"run_dir={run_dir}", *(set_ or [])])
    _console().print(
        "[bold]tuneforge demo[/]: triage support tickets into queue + priority (JSON) with SmolLM2-135M-Instruct.\n"
        "Steps: prepare the model (once) → clean + split the data → LoRA training → base vs tuned on the test split."
    )
    api.finetune(cfg, overwrite=fresh)


# ------------------------------------------------------------------------------------------------ train
@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="Run config (YAML). See examples/*.yaml.")] = None,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace whatever the run folder holds.")] = False,
    evaluate: Annotated[
        bool,
        typer.Option("--eval/--no-eval", help="Compare base and tuned on the test split after training."),
    ] = True,
    help_config: Annotated[
        bool, typer.Option("--help-config", help="List every config key with its default and meaning.")
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            min=1,
            help="Train data-parallel on N processes of this machine (torchrun; gloo on CPU, nccl on GPUs). The "
            "global batch stays the config's: each step's examples are shared out. Default: the config's "
            "train.distributed.num_processes (1).",
        ),
    ] = None,
    nnodes: Annotated[int, typer.Option(min=1, help="Machines taking part (run the command on each).")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="This machine's place among --nnodes (0 first).")] = 0,
    master_addr: Annotated[str, typer.Option(help="Address of the node with --node-rank 0.")] = "127.0.0.1",
    master_port: Annotated[
        int | None, typer.Option(help="Its port (default: a free one on one node, 29500 on several).")
    ] = None,
) -> None:
    """Fine-tune a model as a config file describes (data, model, method, train, eval)."""
    from tuneforge import api
    from tuneforge.config import describe

    if help_config:
        _print_config_help(describe())
        return
    if config is None:
        raise TuneforgeError(
            "no config given", "run `tuneforge train CONFIG.yaml` (see examples/tickets-lora.yaml)"
        )
    cfg = api.load_config(config, set_ or [])  # checked here, before any rank starts
    nproc = nproc or cfg.train.distributed.num_processes
    from tuneforge.train import distributed

    # A rank started by torchrun (below, or by the user's own torchrun / accelerate launch) just trains.
    if (nproc > 1 or nnodes > 1) and not distributed.current().active:
        args = ["train", str(config), *(f"--set={s}" for s in set_ or [])]
        args += ["--resume"] * resume + ["--overwrite"] * overwrite + ([] if evaluate else ["--no-eval"])
        code = distributed.launch(args, nproc, nnodes, node_rank, master_addr, master_port)
        if code:
            raise typer.Exit(code)
        return
    api.finetune(cfg, resume=resume, overwrite=overwrite, evaluate=evaluate)


def _print_config_help(rows: list[tuple[str, str, str]]) -> None:
    from rich.table import Table

    from tuneforge.methods import registry

    t = Table(title="Run config keys (YAML sections, or --set section.key=value)")
    t.add_column("key")
    t.add_column("default")
    t.add_column("meaning")
    for k, d, desc in rows:
        t.add_row(k, d, desc)
    for spec in registry.available():
        for name, f in spec.config_cls.model_fields.items():
            if name == "name":
                continue
            default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            t.add_row(f"method.{name}  [dim](method {spec.name})[/]", default, f.description or "")
    _console().print(t)


# --------------------------------------------------------------------------------------------- estimate
@app.command()
def estimate(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    set_: SetOpt = None,
    timing: Annotated[
        bool, typer.Option("--time/--no-time", help="Also time a few training micro-batches.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            min=1,
            help="Per rank of a data-parallel run on N processes (default: train.distributed.num_processes).",
        ),
    ] = None,
) -> None:
    """Predict peak memory and time per epoch of a run before training it."""
    import json

    from tuneforge import api
    from tuneforge.models.memory import explain
    from tuneforge.models.memory import gib as memory_gib
    from tuneforge.recipes.run import probe

    cfg = api.load_config(config, set_ or [])
    ranks = nproc or cfg.train.distributed.num_processes
    strategy = cfg.train.distributed.strategy
    with probe(cfg) as rec:  # the real run folder is left untouched
        # timed steps of one rank's share would run on all the cores, not its share of them: memory only
        est = rec.estimate(timing=timing and ranks == 1, ranks=ranks)
        total_steps, steps_per_epoch = rec.loop.total_steps, rec.loop.steps_per_epoch
        if ranks > 1:
            per_rank = {"ddp": (est, rec.allreduce_bytes(ranks)), "fsdp": rec.sharded_estimate(est, ranks)}
    d = est.to_dict()
    if ranks > 1:
        est, traffic = per_rank[strategy]
        d = est.to_dict() | {"ranks": ranks, "strategy": strategy, "bytes_exchanged_per_step": traffic}
        d["strategies"] = {k: {"peak_bytes": e.peak_bytes, "fits": e.fits} for k, (e, _) in per_rank.items()}
    if timing and est.seconds_per_epoch is not None:
        d["seconds_total"] = est.seconds_per_epoch * total_steps / steps_per_epoch
    if as_json:
        print(json.dumps(d, indent=1))
        return
    if ranks > 1:
        holds = (
            f"each rank holds 1/{ranks} of the weights, gradients and optimizer state"
            if strategy == "fsdp"
            else "each rank holds the whole model"
        )
        _console().print(
            f"per rank of {ranks} ({strategy}: {holds} and 1/{ranks} of each step's examples; "
            f"{d['bytes_exchanged_per_step'] / 1e6:.1f} MB exchanged per rank and step):"
        )
    _console().print(explain(est))
    if ranks > 1:
        other = "ddp" if strategy == "fsdp" else "fsdp"
        alt = per_rank[other][0]
        if not est.fits and alt.fits:
            _console().print(
                f"[green]train.distributed.strategy={other} fits:[/] about {memory_gib(alt.peak_bytes)} per rank"
            )
        elif alt.peak_bytes < est.peak_bytes:
            _console().print(f"(strategy {other}: about {memory_gib(alt.peak_bytes)} per rank)")
    if "seconds_total" in d:
        _console().print(f"time for the whole run ({total_steps} steps): {d['seconds_total']:.0f} s")
    if not est.fits:
        _console().print("[yellow]does not fit; try:[/] " + "; ".join(est.suggestions))


# ------------------------------------------------------------------------------------------ eval/compare
EvalFewShot = Annotated[
    int, typer.Option("--few-shot", help="Also judge the base with N solved training examples.")
]


def _eval_cfg(
    few_shot: int, max_examples: int | None, max_new_tokens: int, samples: int, general: str = "bundled"
):
    from tuneforge.config import EvalConfig

    return EvalConfig(
        few_shot=few_shot,
        max_examples=max_examples,
        max_new_tokens=max_new_tokens,
        samples=samples,
        general=None if general.lower() == "none" else general,
    )


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="Model alias, folder, hub id, or a run folder.")],
    data: Annotated[
        str | None,
        typer.Option(help="Evaluate on every record of this file (default: the run's test split)."),
    ] = None,
    few_shot: EvalFewShot = 0,
    max_examples: Annotated[int | None, typer.Option(help="Evaluate at most N examples.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 64,
    out: Annotated[str | None, typer.Option(help="Folder for report.json / report.html.")] = None,
) -> None:
    """Score one model on held-out data: task metrics (strict and lenient), latency, prompt size."""
    from tuneforge import api

    api.compare_models(
        model, None, data=data, eval_cfg=_eval_cfg(few_shot, max_examples, max_new_tokens, 5), out_dir=out
    )


@app.command()
def compare(
    base: Annotated[str, typer.Argument(help="The 'before' model (alias, folder, hub id or run).")],
    tuned: Annotated[str, typer.Argument(help="The 'after' model (usually a run folder).")],
    data: Annotated[str | None, typer.Option(help="Test file (default: the tuned run's test split).")] = None,
    few_shot: EvalFewShot = 3,
    max_examples: Annotated[int | None, typer.Option(help="Evaluate at most N examples.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 64,
    samples: Annotated[int, typer.Option(help="Sample answers shown side by side.")] = 5,
    general: Annotated[
        str,
        typer.Option(
            help="General held-out set on which forgetting is measured: `bundled`, a chat file, or `none`."
        ),
    ] = "bundled",
    out: Annotated[str | None, typer.Option(help="Folder for report.json / report.html.")] = None,
) -> None:
    """Before/after report for any model pair on the same questions."""
    from tuneforge import api

    api.compare_models(
        base,
        tuned,
        data=data,
        eval_cfg=_eval_cfg(few_shot, max_examples, max_new_tokens, samples, general),
        out_dir=out,
    )


# ------------------------------------------------------------------------------------------------- chat
@app.command()
def chat(
    model: Annotated[
        str, typer.Argument(help="Model alias, folder, hub id, or a run folder.")
    ] = DEFAULT_MODEL,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Answer this one message and exit.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
) -> None:
    """Talk to a base model or a tuned run. /reset clears the history, /exit quits."""
    from tuneforge.api import load_model
    from tuneforge.data.schema import Message
    from tuneforge.eval.generate import SamplingParams, stream_chat

    lm = load_model(model)
    if system is None and lm.run_dir is not None:
        system = _run_system_prompt(lm.run_dir)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    history: list[Message] = [Message("system", system)] if system else []
    out = sys.stdout

    def answer(text: str) -> None:
        history.append(Message("user", text))
        parts = []
        for piece in stream_chat(lm, history, params):
            parts.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        history.append(Message("assistant", "".join(parts).strip()))

    if prompt is not None:
        answer(prompt)
        return
    _console().print(f"Chatting with [bold]{model}[/]. /reset clears the history, /exit quits.")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history[:] = [Message("system", system)] if system else []
            continue
        out.write("model> ")
        answer(text)


# ------------------------------------------------------------------------------------------------ export
@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    to: Annotated[
        str,
        typer.Option("--to", help="merged (Hugging Face folder), gguf, gguf-lora (adapter + base), ollama."),
    ] = "merged",
    out: Annotated[
        Path | None, typer.Option(help="Where to write (default: RUN/export/FORMAT[-QUANT]).")
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option(
            help="GGUF type: f32, f16, bf16, q8_0; q4_k_m, q5_k_m, q6_k ... with llama.cpp's quantizer."
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Run the export and compare it with the tuned model on the test prompts.",
        ),
    ] = True,
    prompts: Annotated[
        Path | None, typer.Option(help="Verify on this data file instead of the run's test split.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Verify on at most N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer when verifying.")] = 64,
    dtype: Annotated[str, typer.Option(help="merged: float32, bfloat16 or float16.")] = "float32",
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Export a tuned run to run elsewhere (transformers / vLLM, llama.cpp, Ollama) and check it answers alike."""
    from tuneforge import api
    from tuneforge.export.verify import print_result

    con = _console()
    result = api.export_run(
        run,
        to,
        out=out,
        quant=quant,
        verify_export=verify,
        prompts=prompts,
        limit=limit,
        max_new_tokens=max_new_tokens,
        dtype=dtype,
        force=force,
        show=lambda msg: con.print(f"[dim]{msg}[/]"),
    )
    print_result(result, con)
    if result["status"] == "failed":
        raise typer.Exit(1)


def _run_system_prompt(run_dir: Path) -> str | None:
    """A run trained with one fixed system prompt answers best when chat uses it too."""
    from tuneforge.api import saved_splits

    train_split = saved_splits(run_dir)[0]
    systems = {e.messages[0].content for e in train_split if e.messages and e.messages[0].role == "system"}
    return systems.pop() if len(systems) == 1 else None


# ------------------------------------------------------------------------------------------------- data
@data_app.command("inspect")
def data_inspect(
    file: Annotated[str, typer.Argument(help="JSONL, JSON, CSV, Parquet or XML file.")],
    format: Annotated[str, typer.Option(help="Force a format instead of detecting it.")] = "auto",
    model: Annotated[
        str | None,
        typer.Option(
            help=f"Count tokens with this model's tokenizer (default: {DEFAULT_MODEL} if installed)."
        ),
    ] = DEFAULT_MODEL,
    column: Annotated[
        list[str] | None, typer.Option("--column", "-c", help="Map a field: -c text=review (repeatable).")
    ] = None,
) -> None:
    """Detected format, counts, token-length histogram, duplicates and problems of a data file."""
    from tuneforge.data.inspect import inspect_file, render_inspect

    columns = dict(c.split("=", 1) for c in (column or []))
    count = None
    if model:
        count = _token_counter(model)
    report = inspect_file(file, format=format, columns=columns or None, count_tokens=count)
    render_inspect(report, _console())


def _token_counter(model: str):
    from tuneforge.config import DataConfig
    from tuneforge.data.tokenize import count_tokens_fn
    from tuneforge.models.load import tokenizer_for

    try:
        tok = tokenizer_for(model)
    except TuneforgeError as e:
        _console().print(f"[yellow]token counts unavailable ({e}); showing characters[/]")
        return None
    return count_tokens_fn(tok, DataConfig(train="-"))


# ---------------------------------------------------------------------------------------- models/methods
@app.command()
def models() -> None:
    """Bundled model aliases and whether their weights are installed."""
    from rich.table import Table

    from tuneforge.models.registry import BUNDLED, BUNDLED_FOLDERS

    t = Table(
        title="Bundled models (also: any local folder, .gguf file, run folder, or Hugging Face id org/name)"
    )
    for col in ("alias", "upstream", "installed", "description"):
        t.add_column(col)
    for m in BUNDLED.values():
        t.add_row(m.alias, m.hf_id, "yes" if m.version() else f"no — {m.install}", m.description)
    for f in BUNDLED_FOLDERS.values():
        t.add_row(f.alias, f.hf_id, "yes" if f.locate() else f"no — {f.install}", f.description)
    _console().print(t)


@app.command()
def methods() -> None:
    """Fine-tuning methods and their options."""
    from rich.table import Table

    from tuneforge.methods import registry

    t = Table(title="Methods (method.name in the config)")
    t.add_column("name")
    t.add_column("what it does")
    t.add_column("options")
    for spec in registry.available():
        opts = ", ".join(n for n in spec.config_cls.model_fields if n != "name")
        t.add_row(spec.name, spec.summary, opts or "—")
    _console().print(t)


# ------------------------------------------------------------------------------------------- serve/worker
EnvFileOpt = Annotated[
    Path | None, typer.Option(help="Read TUNEFORGE_* settings from this file (see examples/serve.env).")
]
DataDirOpt = Annotated[
    Path | None, typer.Option(help="Files, runs and the SQLite database (env TUNEFORGE_DATA_DIR).")
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db (env DATABASE_URL)."),
]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes to start for fine-tuning jobs; 0 if you run `tuneforge worker` yourself "
            "(env TUNEFORGE_WORKERS, default 1)."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    env_file: EnvFileOpt = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="batched: continuous batching across requests and LoRA adapters (default); serial: one "
            "generation at a time per model; vllm: vLLM servers underneath, started from vllm_command "
            "(env TUNEFORGE_ENGINE)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve an OpenAI-compatible API (files, fine-tuning jobs, models, chat) with workers for the jobs."""
    from tuneforge.serve.server import serve as run_server
    from tuneforge.settings import load_settings

    settings = load_settings(env_file, data_dir=data_dir, database_url=database_url, engine=engine)
    run_server(settings, host, port, workers, log_level)


@app.command()
def worker(
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    env_file: EnvFileOpt = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help='Train each job as a task on this Ray cluster ("127.0.0.1:6379", "ray://head:10001"; "local": '
            "start one here); same as TUNEFORGE_EXECUTOR=ray with TUNEFORGE_RAY_ADDRESS.",
        ),
    ] = None,
) -> None:
    """Run fine-tuning jobs and exports from the server's queue (start as many as you like, on any machine sharing
    the data)."""
    from tuneforge.serve.server import run_worker
    from tuneforge.settings import load_settings

    settings = load_settings(env_file, data_dir=data_dir, database_url=database_url)
    if ray is not None:
        settings = settings.model_copy(
            update={"executor": "ray", "ray_address": None if ray == "local" else ray}
        )
    run_worker(settings)


# ------------------------------------------------------------------------------------ experiments (issue 6)
@app.command()
def decide(
    run: Annotated[Path, typer.Argument(help="A tuned run folder (its test split is the held-out set).")],
    docs: Annotated[
        Path | None,
        typer.Option(help="Retrieve from this folder of .txt/.md documents (default: the training split)."),
    ] = None,
    few_shot: Annotated[int, typer.Option("--few-shot", help="Solved training examples for few-shot.")] = 3,
    k: Annotated[int, typer.Option("--k", help="Passages retrieved per question for RAG.")] = 3,
    max_examples: Annotated[int | None, typer.Option(help="Use at most N test questions.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 64,
    metric: Annotated[
        str | None, typer.Option(help="Quality metric to decide on (default: the task's headline metric).")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Points of quality within which options count as equally good.")
    ] = 2.0,
    leakage: Annotated[
        bool,
        typer.Option("--leakage/--no-leakage", help="Also check training-data leakage of the tuned model."),
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: RUN/decide).")] = None,
) -> None:
    """Fine-tune vs prompting vs RAG on the same held-out questions: quality, latency, prompt tokens, cost."""
    from tuneforge.experiments.decide import decide as run_decide
    from tuneforge.experiments.decide import print_decision

    out = out or run / "decide"
    report = run_decide(
        run,
        docs=docs,
        few_shot=few_shot,
        k=k,
        max_examples=max_examples,
        max_new_tokens=max_new_tokens,
        metric=metric,
        tolerance=tolerance,
        leakage=leakage,
        out_dir=out,
    )
    print_decision(report, _console())
    _console().print(f"Report: [bold]{out}/decide.md[/], decide.png, decide.json")


@app.command()
def sweep(
    spec: Annotated[
        Path,
        typer.Argument(
            help="Sweep file (YAML): base config, sampler, search space. See examples/sweeps/tickets.yaml."
        ),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a sweep key: --set trials=4, --set sampler=random (repeatable)."
        ),
    ] = None,
    ray: RayOpt = None,
    ray_parallel: RayParallelOpt = 2,
    ray_cpus: RayCpusOpt = 1.0,
    ray_gpus: RayGpusOpt = 0.0,
) -> None:
    """Hyperparameter search (grid, random, Optuna TPE) with pruning of poor trials; writes the best config."""
    from tuneforge.experiments.sweep import load_sweep, run_sweep

    sweep_cfg, base = load_sweep(spec, set_ or [])
    run_sweep(sweep_cfg, base, ray=_ray_tasks(ray, ray_parallel, ray_cpus, ray_gpus))


@app.command()
def kfold(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    k: Annotated[int, typer.Option("--k", help="Number of folds.")] = 5,
    out: Annotated[Path | None, typer.Option(help="Folder for the fold runs and kfold.json/.md.")] = None,
    set_: SetOpt = None,
    ray: RayOpt = None,
    ray_parallel: RayParallelOpt = 2,
    ray_cpus: RayCpusOpt = 1.0,
    ray_gpus: RayGpusOpt = 0.0,
) -> None:
    """k-fold cross-validation of a config: every metric as mean ± standard deviation over the folds."""
    from tuneforge import api
    from tuneforge.experiments.kfold import kfold as run_kfold

    run_kfold(
        api.load_config(config, set_ or []),
        k=k,
        out=out,
        ray=_ray_tasks(ray, ray_parallel, ray_cpus, ray_gpus),
    )


@app.command("select")
def select_(
    config: Annotated[
        Path, typer.Argument(help="Run config (YAML): the data, method and training to plan for.")
    ],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Candidate: alias, local folder or org/name (repeatable; default: bundled)."
        ),
    ] = None,
    few_shot: Annotated[int, typer.Option("--few-shot", help="Solved training examples for few-shot.")] = 3,
    max_examples: Annotated[int, typer.Option(help="Validation examples each candidate answers.")] = 50,
    metric: Annotated[
        str | None, typer.Option(help="Rank by this metric (default: the task's headline).")
    ] = None,
    timing: Annotated[bool, typer.Option("--time/--no-time", help="Also time training steps.")] = True,
    out: Annotated[Path | None, typer.Option(help="Folder for select.json / select.md.")] = None,
    set_: SetOpt = None,
) -> None:
    """Rank base models on your validation split (zero- and few-shot) next to their training memory and time."""
    from tuneforge import api
    from tuneforge.experiments.select import select as run_select
    from tuneforge.models.registry import BUNDLED

    candidates = model or [m.alias for m in BUNDLED.values() if m.version()]
    run_select(
        api.load_config(config, set_ or []),
        candidates,
        few_shot=few_shot,
        max_examples=max_examples,
        metric=metric,
        timing=timing,
        out=out,
    )


@app.command()
def augment(
    config: Annotated[Path, typer.Argument(help="Run config (YAML) whose training split is augmented.")],
    paraphrases: Annotated[int, typer.Option(help="Rewrites of each prompt by the base model.")] = 1,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template", "-t", help="Prompt variation with {prompt} (repeatable; default: built-in set)."
        ),
    ] = None,
    per_example: Annotated[int, typer.Option(help="Template variations per example (0: none).")] = 1,
    measure: Annotated[
        bool,
        typer.Option("--measure/--no-measure", help="Train with and without; compare on the test split."),
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the augmented data, runs and augment.md.")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Augment a small training set (paraphrases by the base model, templates) and measure the effect."""
    from tuneforge import api
    from tuneforge.experiments.augment import augment as run_augment

    report = run_augment(
        api.load_config(config, set_ or []),
        n_paraphrases=paraphrases,
        templates=template,
        per_example_templates=per_example,
        measure=measure,
        out=out,
    )
    _console().print(f"Augmented training file: [bold]{report['files']['augmented_train']}[/]")


@app.command()
def leakage(
    run: Annotated[Path, typer.Argument(help="A tuned run folder.")],
    canary: Annotated[
        list[str] | None,
        typer.Option("--canary", "-c", help="A string you planted in the training data (repeatable)."),
    ] = None,
    max_examples: Annotated[int, typer.Option(help="Training and test examples probed, each.")] = 100,
    out: Annotated[Path | None, typer.Option(help="Write leakage.json here.")] = None,
) -> None:
    """How much training data the tuned model reproduces verbatim from its prefixes (and planted canaries)."""
    import json

    from tuneforge.experiments.leakage import leakage_of_run, print_leakage

    report = leakage_of_run(run, canary or [], max_examples)
    print_leakage(report, _console())
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "leakage.json").write_text(json.dumps(report, indent=1))


# ------------------------------------------------------------------------------- end of experiments (issue 6)


# ----------------------------------------------------------------------------------------- feedback loop
feedback_app = typer.Typer(
    help="After deployment: a deployment's per-arm figures, and training files from users' feedback.",
    no_args_is_help=True,
)
app.add_typer(feedback_app, name="feedback")
TenantOpt = Annotated[str, typer.Option(help="The tenant (the owner of the API key that made the data).")]


@feedback_app.command("export")
def feedback_export(
    out: Annotated[Path, typer.Option(help="Folder for kto.jsonl, dpo.jsonl and sft.jsonl.")],
    tenant: TenantOpt,
    deployment: Annotated[str | None, typer.Option(help="Only what this deployment routed.")] = None,
    model: Annotated[str | None, typer.Option(help="Only what this model answered.")] = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    env_file: EnvFileOpt = None,
) -> None:
    """Turn stored completions and their feedback into KTO rows (thumbs), DPO pairs (corrections, and answers to
    one prompt rated apart) and SFT rows (corrections, answers rated up); says what was skipped and why."""
    from tuneforge import api
    from tuneforge.settings import load_settings

    settings = load_settings(env_file, data_dir=data_dir, database_url=database_url)
    got = api.feedback_datasets(settings, tenant, out, deployment=deployment, model=model)
    console = _console()
    counts = got["counts"]
    for kind in ("kto", "dpo", "sft"):
        where = got["files"].get(kind, "(none)")
        console.print(f"{kind}: {counts[kind]} rows → {where}")
    for why, n in sorted(counts["used"].items()):
        console.print(f"  used    {n:5d}  {why}")
    for why, n in sorted(counts["skipped"].items()):
        console.print(f"  skipped {n:5d}  {why}")


@feedback_app.command("stats")
def feedback_stats(
    deployment: Annotated[str, typer.Argument(help="The deployment's name.")],
    tenant: TenantOpt,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    env_file: EnvFileOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Per arm: requests, latency, thumbs-up rate with its 95% interval, mean score; and the test between arms."""
    from tuneforge import api
    from tuneforge.settings import load_settings

    stats = api.deployment_figures(
        load_settings(env_file, data_dir=data_dir, database_url=database_url), tenant, deployment
    )
    if json_out:
        import json

        print(json.dumps(stats, indent=1))
        return
    print_deployment_stats(stats, _console())


@feedback_app.command("tune")
def feedback_tune(
    deployment: Annotated[str, typer.Argument(help="The deployment whose first arm is the current version.")],
    tenant: TenantOpt,
    out: Annotated[
        Path, typer.Option(help="Folder for the feedback files, the candidate run and gate.json.")
    ],
    canary: Annotated[
        float, typer.Option(help="Share of the traffic a passed candidate gets.", min=0.001, max=0.5)
    ] = 0.1,
    objective: Annotated[
        str, typer.Option(help="auto (DPO with enough pairs, else KTO), kto, dpo or sft.")
    ] = "auto",
    tolerance: Annotated[float, typer.Option(help="Points of the task metric the candidate may lose.")] = 2.0,
    forgetting_tolerance: Annotated[float, typer.Option(help="% rise of general perplexity allowed.")] = 10.0,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    env_file: EnvFileOpt = None,
) -> None:
    """Export the deployment's feedback, train its current version on it, compare the candidate with the current
    version on the held-out set, and add it as a canary only if it is not worse beyond the tolerances."""
    from tuneforge import api
    from tuneforge.settings import load_settings

    settings = load_settings(env_file, data_dir=data_dir, database_url=database_url)
    record = api.tune_from_feedback(
        settings,
        tenant,
        deployment,
        out,
        canary=canary,
        objective=objective,
        tolerance=tolerance,
        forgetting_tolerance=forgetting_tolerance,
        sets=set_,
    )
    if record["passed"]:
        _console().print(f"canary {record['canary']['model']} takes {canary:.0%} of {deployment}'s traffic")
    else:
        raise TuneforgeError(
            f"the gate refused the candidate: {'; '.join(record['reasons'])}", f"see {out}/gate.json"
        )


def print_deployment_stats(stats: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"deployment {stats['name']}")
    for col in ("arm", "weight", "requests", "p50 ms", "ratings", "up rate", "95% CI", "mean score"):
        table.add_column(col)
    for a in stats["arms"]:
        rate = "-" if a["up_rate"] is None else f"{a['up_rate']:.1%}"
        lo, hi = a["up_rate_ci95"]
        table.add_row(
            a["model"] + (" (shadow)" if a["shadow"] else ""),
            f"{a['weight']:.0%}",
            str(a["requests"]),
            "-" if a["latency_ms_p50"] is None else f"{a['latency_ms_p50']:.0f}",
            str(a["ratings"]),
            rate,
            f"{lo:.1%}-{hi:.1%}",
            "-" if a["mean_score"] is None else f"{a['mean_score']:.2f}",
        )
    console.print(table)
    for c in stats["comparisons"]:
        diff = "-" if c["difference"] is None else f"{c['difference']:+.1%}"
        console.print(
            f"{c['model']} vs {c['control']}: {diff}, z={c['z']:.2f}, p={c['p_value']:.4f} → {c['verdict']}"
        )
    console.print(f"[dim]{stats['test']}[/]")


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    import warnings

    # Deprecation notices from inside transformers/peft are for us, not for the user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        app()
    except TuneforgeError as e:
        msg = f"error: {e.problem}" + (f" — {e.fix}" if e.fix else "")
        print(msg, file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted — continue a training run with `tuneforge train CONFIG --resume`", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
