"""The Python API: what the CLI commands and the service call.

from tuneforge import api
cfg = api.load_config("examples/tickets-lora.yaml", ["train.epochs=1"])
report = api.finetune(cfg)                    # train, then compare base vs tuned on the test split
api.compare_models("smollm2-135m", "runs/tickets-lora")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig, EvalConfig, RunConfig, load_config  # noqa: F401  (re-exported)
from tuneforge.data.schema import Example
from tuneforge.errors import TuneforgeError
from tuneforge.eval.compare import compare
from tuneforge.eval.report import plot_loss, print_report, write_report
from tuneforge.models.load import LoadedModel, attention_for, load_model, set_attention
from tuneforge.progress import console
from tuneforge.train.loop import EventFn, FineTune, run_training
from tuneforge.train.rundir import RunDir


def finetune(
    cfg: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    evaluate: bool = True,
    on_event: EventFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Train a run; then (unless evaluate=False) compare base and tuned on the test split and write reports.

    Returns a summary: {"run_dir", "train": {...}, "report": {...} | None}.
    A config with `stages` trains them in order (train/stages.py); the summary is the last stage's.
    """
    if cfg.stages:
        from tuneforge.train.stages import run_stages

        return run_stages(
            cfg,
            resume=resume,
            overwrite=overwrite,
            evaluate=evaluate,
            on_event=on_event,
            should_stop=should_stop,
            device=device,
            show=show,
        )
    from tuneforge.methods import registry

    if registry.get(cfg.method.name).recipe == "classify":  # a classification head: its own recipe
        from tuneforge.train.classify import finetune_classifier

        return finetune_classifier(
            cfg,
            evaluate=evaluate,
            show=show,
            resume=resume,
            overwrite=overwrite,
            on_event=on_event,
            should_stop=should_stop,
            device=device,
        )
    result, ft = run_training(
        cfg, resume=resume, overwrite=overwrite, on_event=on_event, should_stop=should_stop, device=device
    )
    run = RunDir(Path(cfg.run_dir))
    plot_loss(run.read_metrics(), run.root / "loss_curve.png")
    summary: dict[str, Any] = {
        "run_dir": str(run.root),
        "train": json.loads(run.done.read_text()) if run.done.is_file() else {},
    }
    summary["train"]["stopped_by_request"] = result.stopped_by_request
    if not evaluate or result.stopped_by_request or not ft.splits["test"]:
        ft.cleanup()
        summary["report"] = None
        return summary

    tuned = trained_model(ft)
    model = tuned.model
    shared = getattr(model, "peft_config", None) is not None
    base = (
        tuned
        if shared
        else load_model(
            cfg.model.name,
            dtype=cfg.model.dtype,
            device=device,
            chat_template=cfg.model.chat_template,
            revision=cfg.model.revision,
        )
    )
    report = compare(
        base,
        tuned,
        ft.splits["test"],
        train=ft.splits["train"],
        validation=ft.splits["validation"],
        data_cfg=cfg.data,
        eval_cfg=cfg.eval,
        seed=cfg.seed,
        shared_weights=shared,
    )
    report["training"] = {"method": cfg.method.name, **summary["train"]}
    report["data"] = ft.data_report
    write_report(report, run.root)
    if show:
        print_report(report, console)
        console.print(
            f"Run folder: [bold]{run.root}[/] (adapter/model, metrics.jsonl, loss_curve.png, report.html)"
        )
    summary["report"] = report
    ft.cleanup()
    return summary


def trained_model(ft: FineTune) -> LoadedModel:
    """The model a finished run holds in memory, set up for generation (for evaluation right after training)."""
    model = ft.accelerator.unwrap_model(ft.model)
    set_attention(model, attention_for(ft.cfg.model.attn_implementation, ft.lm.device, training=False))
    return LoadedModel(
        model=model,
        tokenizer=ft.lm.tokenizer,
        name=ft.lm.name,
        source=ft.lm.source,
        base_path=ft.lm.base_path,
        template_origin=ft.lm.template_origin,
        stop_token_ids=ft.lm.stop_token_ids,
        run_dir=ft.run.root,
        method=ft.cfg.method.name,
    )


def test_split_of(run_dir: Path) -> tuple[list[Example], list[Example], list[Example], RunConfig]:
    """(train, validation, test) splits saved by a run, and its config."""
    from tuneforge.data.prepare import read_split

    run = RunDir(run_dir)
    cfg = load_config(run.config)
    parts = [
        read_split(run.data / f"{n}.jsonl") if (run.data / f"{n}.jsonl").is_file() else []
        for n in ("train", "validation", "test")
    ]
    return parts[0], parts[1], parts[2], cfg


def load_eval_data(
    data: str | None, run_dir: Path | None, data_cfg: DataConfig | None, shots: int = 0
) -> tuple[list[Example], list[Example], list[Example], DataConfig]:
    """Examples to evaluate on: a file given with --data (all of it is test), or a run's saved splits."""
    from tuneforge.data.formats import load_file

    if data:
        cfg = data_cfg or DataConfig(train=data)
        res = load_file(data, cfg.format, cfg.columns, cfg.system_prompt)
        if not res.examples:
            raise TuneforgeError(f"{data} holds no usable examples", "run `tuneforge data inspect` on it")
        test = res.examples
        train: list[Example] = test_split_of(run_dir)[0] if run_dir is not None else []
        if not train and shots:
            # No training split to draw solved examples from: take them from the file and score the rest.
            from tuneforge.eval.compare import pick_shots

            chosen = pick_shots(test, shots, seed=0)
            train, test = chosen, [e for e in test if all(e is not c for c in chosen)]
        return train, [], test, cfg
    if run_dir is not None:
        tr, va, te, rcfg = test_split_of(run_dir)
        if not te:
            raise TuneforgeError(f"run {run_dir} has no test split", "pass --data FILE to evaluate on")
        return tr, va, te, rcfg.data
    raise TuneforgeError(
        "nothing to evaluate on", "pass --data FILE, or a run folder whose test split is used"
    )


def compare_models(
    base_name: str,
    tuned_name: str | None,
    *,
    data: str | None = None,
    eval_cfg: EvalConfig | None = None,
    out_dir: str | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Before/after report for any pair, or a single model's scores when tuned_name is None."""
    from tuneforge.train.classify import evaluate_run, is_classifier_run

    if tuned_name is None and is_classifier_run(base_name):  # a classification head: labels, not text
        return evaluate_run(Path(base_name), data=data, out_dir=out_dir, show=show)
    eval_cfg = eval_cfg or EvalConfig()
    tuned = load_model(tuned_name) if tuned_name else None
    # An adapter run over this very base answers as the base with its adapter off: one copy in memory.
    shared = tuned is not None and _same_base(base_name, tuned)
    base = tuned if shared else load_model(base_name)
    run_dir = (tuned.run_dir if tuned is not None else None) or base.run_dir
    train, val, test, dcfg = load_eval_data(data, run_dir, None, eval_cfg.few_shot)
    report = compare(
        base,
        tuned,
        test,
        train=train,
        validation=val,
        data_cfg=dcfg,
        eval_cfg=eval_cfg,
        shared_weights=shared,
    )
    if out_dir:
        write_report(report, Path(out_dir))
    if show:
        print_report(report, console)
    return report


def _same_base(base_name: str, tuned: LoadedModel) -> bool:
    """True if `tuned` is a PEFT run over `base_name`, so the base is the tuned model with adapters off."""
    from tuneforge.models.registry import resolve

    if tuned.run_dir is None or getattr(tuned.model, "peft_config", None) is None:
        return False
    src = resolve(base_name)
    if src.kind == "run":
        return False
    return src.display == tuned.name or str(src.path or src.hub_id) == tuned.base_path
