"""The classification recipe: setup() → train() → finish() → evaluate(), for the `classifier` method.

A sequence-classification head (AutoModelForSequenceClassification) on an encoder or a decoder, trained with
cross-entropy over the labels. It reuses the language-model recipe's parts — data preparation and splits, the
optimizer and scheduler builders, accelerate, atomic checkpoints with exact resume, the run folder and
metrics.jsonl, early stopping on validation loss — and evaluates on the test split with accuracy, per-class
precision/recall/F1 and a confusion matrix, next to the majority-class baseline.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.config import RunConfig
from tuneforge.data.collate import epoch_batches
from tuneforge.errors import DataError, ModelError
from tuneforge.methods import registry
from tuneforge.methods.classifier import is_head
from tuneforge.models.load import base_path_for, pick_device, quiet_transformers
from tuneforge.models.registry import resolve
from tuneforge.progress import bar, console
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.loop import (
    EventFn,
    TrainResult,
    build_optimizer,
    build_scheduler,
    new_accelerator,
    prepare_splits,
    resolve_precision,
    seed_everything,
    with_absolute_paths,
)
from tuneforge.train.rundir import RunDir

LABELS = "labels.json"  # the label of each head output, in order, saved beside the weights


def load_classifier(path: str, labels: list[str], dtype: torch.dtype = torch.float32):
    """(model, tokenizer) with a fresh head of len(labels) outputs on the model in `path`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # decoders: the head reads the last non-pad token, so pad must be set
        tok.pad_token = tok.eos_token
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
        dtype=dtype,
        output_loading_info=True,
    )
    # Only the fresh head may start random: a backbone weight missing from the checkpoint (a tied embedding saved
    # under the LM head's name, say) would otherwise train from noise without a word.
    missing = [k for k in info["missing_keys"] if not is_head(k)]
    if missing:
        raise ModelError(
            f"{path} lacks {len(missing)} backbone weight(s) the classifier needs ({', '.join(missing[:3])})",
            "re-save the model with transformers' save_pretrained, or delete tuneforge's model cache "
            "(~/.cache/tuneforge/models) so a bundled model is converted again",
        )
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def encode(examples, tok, labels: list[str], max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, label index) per example; texts longer than max_length are cut, and both they and labels the
    head does not know are counted on the console."""
    index = {lab: i for i, lab in enumerate(labels)}
    rows, cut, unknown = [], 0, 0
    for e in examples:
        if str(e.label) not in index:
            unknown += 1
            continue
        ids = tok(e.text or "", truncation=False)["input_ids"]
        if len(ids) > max_length:
            cut += 1
            ids = ids[:max_length]
        rows.append((ids, index[str(e.label)]))
    if cut or unknown:
        console.print(
            f"[yellow]{cut} texts cut to {max_length} tokens, {unknown} with a label the classifier does not "
            "know skipped[/]"
        )
    return rows


def batch_of(tok, rows: list[tuple[list[int], int]], device) -> dict[str, torch.Tensor]:
    enc = tok.pad({"input_ids": [r[0] for r in rows]}, return_tensors="pt")
    enc["labels"] = torch.tensor([r[1] for r in rows])
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def predict_rows(model, tok, rows, batch_size: int, autocast=contextlib.nullcontext):
    """(logits, label indices) of encoded rows, in order."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        b = batch_of(tok, rows[i : i + batch_size], device)
        b.pop("labels")
        with autocast():
            out.append(model(**b).logits.float().cpu())
    logits = torch.cat(out) if out else torch.empty(0, model.config.num_labels)
    return logits, torch.tensor([r[1] for r in rows], dtype=torch.long)


class Classify(ckpt.Checkpointed):
    """One classification run; the same options as train.loop.FineTune."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        on_event: EventFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        device: str | None = None,
    ):
        self.cfg = with_absolute_paths(cfg)
        self.run = RunDir(Path(self.cfg.run_dir))
        self.resume, self.overwrite, self.device = resume, overwrite, device
        self.on_event = on_event or (lambda kind, payload: None)
        self.should_stop = should_stop or (lambda: False)
        self.spec = registry.get(self.cfg.method.name)

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        has_progress = self.run.claim(cfg, self.resume, self.overwrite)
        seed_everything(cfg.seed)
        self.base_path = base_path_for(resolve(cfg.model.name), None, cfg.model.revision)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.base_path)
        # Length here is the text's own token count: no chat template is involved.
        count = lambda ex: len(tok(ex.text or "", truncation=False)["input_ids"])  # noqa: E731
        self.splits, self.data_report = prepare_splits(cfg, tok, self.run, count=count)
        bad = [e for e in self.splits["train"] if e.kind != "classification"]
        if bad:
            raise DataError(
                f"method classifier needs classification records (text + label); {cfg.data.train} holds "
                f"{bad[0].kind} records",
                "set data.format classification and map your fields with data.columns, or use method lora",
            )
        self.labels = sorted({str(e.label) for e in self.splits["train"]})
        if len(self.labels) < 2:
            raise DataError(
                f"the training split has {len(self.labels)} label(s)", "a classifier needs two or more"
            )
        self.device_ = pick_device(self.device)
        model, self.tokenizer = load_classifier(self.base_path, self.labels)
        self.train_rows = self._encode(self.splits["train"])
        self.val_rows = self._encode(self.splits["validation"])
        model = self.spec.prepare(model.to(self.device_), cfg.method)
        precision = resolve_precision(cfg.train.precision, self.device_)
        self.accelerator = new_accelerator(precision, cpu=self.device_.type == "cpu")
        optimizer = build_optimizer(model, cfg)
        t = cfg.train
        self.batches_per_epoch = math.ceil(len(self.train_rows) / t.batch_size)
        self.steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / t.grad_accum))
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.steps_per_epoch))
        self.eval_every = t.eval_every or max(1, self.steps_per_epoch // 4)
        self.save_every = t.save_every or self.eval_every
        scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.state = ckpt.LoopState()
        if has_progress:
            self._restore()
        trainable, total = registry.trainable_summary(self.model)
        msg = (
            f"Training a {len(self.labels)}-class head ({', '.join(self.labels)}) on {cfg.model.name} "
            f"(adapter {cfg.method.adapter}): {trainable:,} of {total:,} parameters trainable, "
            f"{len(self.train_rows)} train / {len(self.val_rows)} validation texts, {self.total_steps} steps"
        )
        console.print(msg)
        self.on_event("message", {"message": msg})

    def _encode(self, examples) -> list[tuple[list[int], int]]:
        return encode(examples, self.tokenizer, self.labels, self.cfg.data.max_length)

    def _batch(self, rows: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        return batch_of(self.tokenizer, rows, self.accelerator.device)

    def _restore(self) -> None:
        ckpt.clean_partial(self.run.checkpoints)
        found = ckpt.complete_checkpoints(self.run.checkpoints, self.cfg.fingerprint())
        if found:
            self.state = ckpt.load_checkpoint(found[-1], self.model, self.optimizer, self.scheduler)
            console.print(f"Resumed from {found[-1].name} (step {self.state.step} of {self.total_steps})")
        self.run.truncate_metrics(self.state.step)

    # ---------------------------------------------------------------------------------------------- train
    def micro_batches(self, step: int) -> list[list[int]]:
        t = self.cfg.train
        lengths = [len(r[0]) for r in self.train_rows]
        out = []
        for k in range(step * t.grad_accum, (step + 1) * t.grad_accum):
            epoch, pos = divmod(k, self.batches_per_epoch)
            out.append(epoch_batches(lengths, t.batch_size, self.cfg.seed, epoch, t.group_by_length)[pos])
        return out

    def train(self) -> TrainResult:
        st, t = self.state, self.cfg.train
        start, stopped_by_request = time.time(), False
        self.model.train()
        with bar("Training", self.total_steps, "loss", "speed") as progress:
            task = progress.add_task("Training", total=self.total_steps, completed=st.step, loss="", speed="")
            while st.step < self.total_steps:
                if self.should_stop():
                    stopped_by_request = True
                    self.save_checkpoint()
                    break
                row = self.train_step(st.step)
                st.step += 1
                st.tokens_seen += row.pop("tokens")
                row = {"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 4), **row}
                if st.step % t.log_every == 0 or st.step == self.total_steps:
                    self._log(row)
                progress.update(task, advance=1, loss=f"loss {row['loss']:.4f}", speed="")
                last = st.step == self.total_steps
                if self.val_rows and (st.step % self.eval_every == 0 or last) and self.validate_and_track():
                    st.stopped_early = True
                    self.save_checkpoint()
                    console.print(
                        f"Early stopping at step {st.step} (best validation loss at {st.best_step})"
                    )
                    break
                if st.step % self.save_every == 0 or last:
                    self.save_checkpoint()
        st.elapsed_s += time.time() - start
        return TrainResult(
            run_dir=self.run.root,
            steps=st.step,
            best_val_loss=st.best_val_loss,
            best_step=st.best_step,
            stopped_early=st.stopped_early,
            stopped_by_request=stopped_by_request,
            train_seconds=st.elapsed_s,
            tokens_seen=st.tokens_seen,
            data_report=self.data_report,
        )

    def train_step(self, step: int) -> dict[str, float]:
        t0 = time.time()
        mbs = self.micro_batches(step)
        n = sum(len(mb) for mb in mbs)
        loss_sum = correct = tokens = 0.0
        for mb in mbs:
            b = self._batch([self.train_rows[i] for i in mb])
            labels = b.pop("labels")
            with self.accelerator.autocast():
                logits = self.model(**b).logits.float()
            loss = F.cross_entropy(logits, labels, reduction="sum")
            self.accelerator.backward(loss / n)
            loss_sum += float(loss.detach())
            correct += float((logits.argmax(-1) == labels).sum())
            tokens += int(b["attention_mask"].sum())
        if self.cfg.train.max_grad_norm:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.accelerator.clip_grad_norm_(params, self.cfg.train.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": loss_sum / n,
            "accuracy": correct / n,
            "lr": lr,
            "tokens": tokens,
            "seconds": time.time() - t0,
        }

    # ------------------------------------------------------------------------------------------ validation
    def predict(self, rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, label indices) for encoded rows, in order."""
        was = self.model.training
        out = predict_rows(
            self.model, self.tokenizer, rows, self.cfg.train.batch_size * 2, self.accelerator.autocast
        )
        if was:
            self.model.train()
        return out

    def validate_and_track(self) -> bool:
        st = self.state
        logits, y = self.predict(self.val_rows)
        vl = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(-1) == y).float().mean())
        self._log(
            {
                "step": st.step,
                "epoch": round(st.step / self.steps_per_epoch, 4),
                "val_loss": vl,
                "val_accuracy": acc,
            }
        )
        improved, stop = st.record_validation(vl, self.cfg.train.early_stopping_patience)
        if improved:
            self.save_artifact(self.run.best)
        return stop

    # ----------------------------------------------------------------------------------------- checkpoints
    def artifact_extras(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder)
        (folder / LABELS).write_text(json.dumps(self.labels))

    def reload_best(self) -> None:
        self.model = load_run_classifier(self.run.root, self.cfg)[0].to(self.device_)

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, examples=None) -> dict[str, Any]:
        """Test-split report: the tuned classifier next to the majority-class baseline."""
        examples = self.splits["test"] if examples is None else examples
        return classification_report(self.predict, self.labels, self._encode(examples), self.splits["train"])


def classification_report(
    predict: Callable, labels: list[str], rows: list, train_examples: list
) -> dict[str, Any]:
    """The tuned classifier's scores next to the majority class of the training split."""
    from tuneforge.eval.metrics import classification_scores

    t0 = time.time()
    logits, y = predict(rows)
    ms = 1000 * (time.time() - t0) / max(len(rows), 1)
    truth = [labels[i] for i in y.tolist()]
    pred = [labels[i] for i in logits.argmax(-1).tolist()] if len(rows) else []
    majority = (
        Counter(str(e.label) for e in train_examples).most_common(1)[0][0] if train_examples else labels[0]
    )
    variants = [
        {
            "key": "majority",
            "title": f"majority class ({majority})",
            "metrics": classification_scores(truth, [majority] * len(truth), labels),
        },
        {
            "key": "tuned",
            "title": "tuned classifier",
            "metrics": classification_scores(truth, pred, labels),
            "ms_per_example": ms,
        },
    ]
    return {
        "task": "classification",
        "labels": labels,
        "n_test": len(rows),
        "variants": variants,
        "gain": {"accuracy": 100 * (variants[1]["metrics"]["accuracy"] - variants[0]["metrics"]["accuracy"])},
    }


def load_run_classifier(run_dir: Path, cfg: RunConfig | None = None):
    """(model, tokenizer, labels) of a trained classifier run."""
    from tuneforge.config import load_config

    cfg = cfg or load_config(Path(run_dir) / "config.yaml")
    spec = registry.get(cfg.method.name)
    artifact = Path(run_dir) / spec.artifact
    labels = json.loads((artifact / LABELS).read_text())
    base = None
    if (artifact / "adapter_config.json").is_file():  # adapters (and the head) over a fresh base
        base, _ = load_classifier(base_path_for(resolve(cfg.model.name), None, cfg.model.revision), labels)
    from transformers import AutoTokenizer

    return spec.load(base, artifact), AutoTokenizer.from_pretrained(str(artifact)), labels


def finetune_classifier(
    cfg: RunConfig, *, evaluate: bool = True, show: bool = True, **options: Any
) -> dict[str, Any]:
    """train → finish → evaluate on the test split → report.json / report.html; the summary api.finetune returns."""
    from tuneforge.eval.report import plot_loss, print_classification_report, write_classification_report

    rec = Classify(cfg, **options)
    rec.setup()
    result = rec.train()
    summary: dict[str, Any] = {"run_dir": str(rec.run.root), "train": {}, "report": None}
    if result.stopped_by_request:
        summary["train"] = {"stopped_by_request": True}
        return summary
    rec.finish()
    summary["train"] = {**json.loads(rec.run.done.read_text()), "stopped_by_request": False}
    plot_loss(rec.run.read_metrics(), rec.run.root / "loss_curve.png")
    if evaluate and rec.splits["test"]:
        report = rec.evaluate()
        report["base_model"] = cfg.model.name
        report["training"] = {"method": cfg.method.name, "adapter": cfg.method.adapter, **summary["train"]}
        write_classification_report(report, rec.run.root)
        if show:
            print_classification_report(report, console)
        summary["report"] = report
    rec.accelerator.free_memory()
    return summary


def is_classifier_run(name: str) -> bool:
    p = Path(name)
    if not (p / "config.yaml").is_file():
        return False
    from tuneforge.config import load_config

    return registry.get(load_config(p / "config.yaml").method.name).recipe == "classify"


def evaluate_run(
    run_dir: Path, *, data: str | None = None, out_dir: str | None = None, show: bool = True
) -> dict[str, Any]:
    """`tuneforge eval RUN` for a classifier: its test split, or every record of `data`."""
    from tuneforge.config import load_config
    from tuneforge.data.formats import load_file
    from tuneforge.data.prepare import read_split
    from tuneforge.eval.report import print_classification_report, write_classification_report

    cfg = load_config(Path(run_dir) / "config.yaml")
    model, tok, labels = load_run_classifier(Path(run_dir), cfg)
    train = read_split(Path(run_dir) / "data" / "train.jsonl")
    if data:
        examples = load_file(data, "classification", cfg.data.columns, None).examples
    else:
        examples = read_split(Path(run_dir) / "data" / "test.jsonl")
    if not examples:
        raise DataError("nothing to evaluate on", "pass --data FILE with text + label records")
    rows = encode(examples, tok, labels, cfg.data.max_length)
    report = classification_report(
        lambda r: predict_rows(model, tok, r, cfg.train.batch_size * 2), labels, rows, train
    )
    report["base_model"] = cfg.model.name
    if out_dir:
        write_classification_report(report, Path(out_dir))
    if show:
        print_classification_report(report, console)
    return report
