"""The experiment commands: a whole `tuneforge decide` from the command line, and one-line errors."""

from __future__ import annotations

import json

import yaml

from tests.conftest import capitals_records, write_jsonl
from tests.test_cli import _assert_one_line_error, run_cli


def _config(tmp_path, model: str) -> str:
    data = {"train": str(write_jsonl(tmp_path / "d.jsonl", capitals_records())), "max_length": 64}
    cfg = {"run_dir": str(tmp_path / "run"), "data": data, "model": {"name": model}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_decide_command_prints_the_table_and_writes_the_report(tuned_run, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    res = CliRunner().invoke(
        app,
        [
            "decide",
            str(tuned_run),
            "--few-shot",
            "1",
            "--k",
            "1",
            "--max-new-tokens",
            "6",
            "--no-leakage",
            "--out",
            str(tmp_path / "d"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Recommendation" in res.output and "fine-tuned" in res.output
    assert (tmp_path / "d" / "decide.md").is_file()


def test_experiment_commands_fail_with_one_line(tmp_path, capsys, tiny_model_dir):
    code, _, err = run_cli(["decide", str(tmp_path / "no-run")], capsys)
    _assert_one_line_error(code, err, "does not exist", "tuneforge train")
    code, _, err = run_cli(["sweep", str(tmp_path / "no-sweep.yaml")], capsys)
    _assert_one_line_error(code, err, "does not exist", "examples/sweeps/tickets.yaml")
    cfg = _config(tmp_path, str(tiny_model_dir))
    code, _, err = run_cli(["kfold", cfg, "--k", "1"], capsys)
    _assert_one_line_error(code, err, "k >= 2")
    code, _, err = run_cli(["augment", cfg, "--template", "no placeholder", "--paraphrases", "0"], capsys)
    _assert_one_line_error(code, err, "{prompt}")
    code, _, err = run_cli(["select", cfg, "--model", str(tmp_path / "nothing-here")], capsys)
    _assert_one_line_error(code, err, "no candidate could be evaluated")


def test_leakage_command_reports_train_vs_unseen_and_names_absent_canaries(tuned_run, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    res = CliRunner().invoke(
        app,
        [
            "leakage",
            str(tuned_run),
            "--canary",
            "never-trained-xyz",
            "--max-examples",
            "8",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "tuned, training examples" in res.output and "Verdict" in res.output
    report = json.loads((tmp_path / "leakage.json").read_text())
    assert report["tuned_train"]["n"] == 8 and report["tuned_test"]["n"] > 0
    assert report["canaries_not_in_training_data"] == ["never-trained-xyz"]
