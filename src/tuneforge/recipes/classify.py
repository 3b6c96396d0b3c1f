"""The classification recipe, for the `classifier` method: a sequence-classification head
(AutoModelForSequenceClassification) on an encoder or a decoder, trained with cross-entropy over the labels by the
same training loop as every other run (train/loop.py), and evaluated on the test split with accuracy,
per-class precision/recall/F1 and a confusion matrix, next to the majority-class baseline.

    rec = Classify(cfg); rec.setup(); rec.loop.train(); rec.loop.finish(); rec.evaluate()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, with_absolute_paths
from tuneforge.data.tokenize import encode_labeled
from tuneforge.errors import DataError
from tuneforge.eval.classify import classification_headline, classification_report, predict_rows
from tuneforge.methods import registry
from tuneforge.models.adapters import record_base
from tuneforge.models.classifier import LABELS_FILE, load_classifier
from tuneforge.models.load import base_path_for, pick_device
from tuneforge.models.registry import hub_id_for, resolve
from tuneforge.recipes.splits import prepare_splits, token_counter
from tuneforge.rundir import RunDir
from tuneforge.train import auto
from tuneforge.train.loop import Hooks, Loop, RunOptions, start_run
from tuneforge.train.objectives import Classification
from tuneforge.train.runtime import resolve_precision


class Classify:
    """One classification run; options as RunOptions takes them."""

    def __init__(self, cfg: RunConfig, **options: Any):
        self.cfg = with_absolute_paths(cfg)
        self.run = RunDir(self.cfg.run_dir)
        self.options = RunOptions(**options)
        self.spec = registry.get(self.cfg.method.name)

    def setup(self) -> None:
        cfg = self.cfg
        has_progress = start_run(cfg, self.run, self.options)
        base_path = base_path_for(resolve(cfg.model.name), None, cfg.model.revision)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base_path)
        self.splits, self.data_report = prepare_splits(cfg, self.run, token_counter(cfg, tok))
        self.labels = self._labels()
        device = pick_device(self.options.device)
        model, self.tokenizer = load_classifier(base_path, self.labels)
        self.train_rows = self._encode(self.splits["train"])
        self.val_rows = self._encode(self.splits["validation"])
        model = self.spec.prepare(model.to(device), cfg.method)
        facts = auto.RunFacts(
            n_items=len(self.train_rows),
            width=getattr(model.config, "hidden_size", None),
            has_validation=bool(self.val_rows),
            instruct=False,
        )
        cfg = self.cfg = auto.resolve_and_record(cfg, self.run, facts, has_progress, self.options.on_event)
        self.loop = Loop(
            cfg,
            self.run,
            model,
            Classification(self.tokenizer),
            self.train_rows,
            self.val_rows,
            pad_id=self.tokenizer.pad_token_id,
            precision=resolve_precision(cfg.train.precision, device),
            device=device,
            options=self.options,
            hooks=Hooks(artifact_extras=self._artifact_extras),
        )
        if has_progress:
            self.loop.restore()
        trainable, total = registry.trainable_summary(self.loop.model)
        self.loop.announce(
            f"Training a {len(self.labels)}-class head ({', '.join(self.labels)}) on {cfg.model.name} "
            f"(adapter {cfg.method.adapter}): {trainable:,} of {total:,} parameters trainable, "
            f"{len(self.train_rows)} train / {len(self.val_rows)} validation texts, {self.loop.total_steps} steps"
        )

    def _labels(self) -> list[str]:
        bad = [e for e in self.splits["train"] if e.kind != "classification"]
        if bad:
            raise DataError(
                f"method classifier needs classification records (text + label); {self.cfg.data.train} holds "
                f"{bad[0].kind} records",
                "set data.format classification and map your fields with data.columns, or use method lora",
            )
        labels = sorted({str(e.label) for e in self.splits["train"]})
        if len(labels) < 2:
            raise DataError(
                f"the training split has {len(labels)} label(s)", "a classifier needs two or more"
            )
        return labels

    def _encode(self, examples):
        return encode_labeled(examples, self.tokenizer, self.labels, self.cfg.data.max_length)

    def _artifact_extras(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder)
        (folder / LABELS_FILE).write_text(json.dumps(self.labels))
        record_base(folder, self.cfg.model.name, hub_id_for(self.cfg.model.name))

    def _predict(self, rows):
        loop = self.loop
        return predict_rows(
            loop.model, self.tokenizer, rows, self.cfg.train.batch_size * 2, loop.accelerator.autocast
        )

    def evaluate(self, examples=None) -> dict[str, Any]:
        """Test-split report: the tuned classifier next to the majority-class baseline."""
        examples = self.splits["test"] if examples is None else examples
        return classification_report(self._predict, self.labels, self._encode(examples), self.splits["train"])

    def report(self, training: dict[str, Any], show: bool) -> dict[str, Any]:
        """The test-split report as report.json and report.html, and with `show` on the console."""
        from tuneforge.eval.report import print_classification_report, write_classification_report
        from tuneforge.progress import console

        report = self.evaluate()
        report["base_model"] = self.cfg.model.name
        report["training"] = {"method": self.cfg.method.name, "adapter": self.cfg.method.adapter, **training}
        write_classification_report(report, self.run.root)
        if show:
            print_classification_report(report, console)
        return report

    def score(self, examples: list, labels: list[str], title: str) -> dict[str, Any]:
        """The tuned classifier on `examples`, with the headline rows a table of runs shows."""
        del labels  # the head's own labels decide
        report = self.evaluate(examples)
        tuned = report["variants"][1]["metrics"]
        return {"key": "tuned", "title": title, "metrics": tuned, "headline": classification_headline(tuned)}
