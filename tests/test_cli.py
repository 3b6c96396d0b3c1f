"""Bad input at the command line: one clear line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import json
import sys
from unittest import mock

import pytest
import yaml

from tests.conftest import capitals_records, write_jsonl
from tuneforge.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with mock.patch.object(sys, "argv", ["tuneforge", *args]), pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _config(tmp_path, **data_over) -> str:
    data = {"train": str(write_jsonl(tmp_path / "d.jsonl", capitals_records())), **data_over}
    cfg = {"run_dir": str(tmp_path / "run"), "data": data, "model": {"name": "smollm2-135m"}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_config_file(capsys, tmp_path):
    _assert_one_line_error(*run_cli(["train", str(tmp_path / "nope.yaml")], capsys)[::2], "does not exist")


def test_unknown_config_key(capsys, tmp_path):
    code, _, err = run_cli(["train", _config(tmp_path), "--set", "train.epoch=2"], capsys)
    _assert_one_line_error(code, err, "unknown config key `train.epoch`", "did you mean `epochs`")


def test_unknown_model_alias(capsys, tmp_path):
    code, _, err = run_cli(["train", _config(tmp_path), "--set", "model.name=smollm9"], capsys)
    _assert_one_line_error(code, err, "unknown model 'smollm9'", "smollm2-135m")


def test_missing_data_file(capsys, tmp_path):
    code, _, err = run_cli(["train", _config(tmp_path, train=str(tmp_path / "missing.jsonl"))], capsys)
    _assert_one_line_error(code, err, "missing.jsonl")


def test_wrong_field_names_for_a_forced_format(capsys, tmp_path):
    code, _, err = run_cli(["train", _config(tmp_path, format="alpaca")], capsys)
    _assert_one_line_error(code, err, "alpaca", "data.columns")


def test_missing_label_column(capsys, tmp_path):
    csv = tmp_path / "reviews.csv"
    csv.write_text("review,stars\nGreat phone,5\nBroke in a week,1\n")
    cfg = _config(tmp_path, train=str(csv), format="classification", columns={"text": "review"})
    code, _, err = run_cli(["train", cfg], capsys)
    _assert_one_line_error(code, err, "label")


def test_run_folder_with_a_different_run(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"data": {"train": "other.jsonl"}, "train": {"learning_rate": 0.5}})
    )
    code, _, err = run_cli(["train", _config(tmp_path)], capsys)
    _assert_one_line_error(code, err, "already holds a different run", "--overwrite")


def test_inspect_unknown_format_and_missing_file(capsys, tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    code, _, err = run_cli(["data", "inspect", str(txt), "--model", ""], capsys)
    _assert_one_line_error(code, err, ".txt")
    code, _, err = run_cli(["data", "inspect", str(tmp_path / "none.jsonl"), "--model", ""], capsys)
    _assert_one_line_error(code, err, "none.jsonl")


def test_inspect_reports_format_and_counts(capsys, tmp_path):
    rows = capitals_records(30) + [{"messages": [{"role": "bot", "content": "hi"}]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    code = 0
    with mock.patch.object(sys, "argv", ["tuneforge", "data", "inspect", str(path), "--model", ""]):
        try:
            main()
        except SystemExit as e:
            code = e.code
    err = capsys.readouterr().err
    assert code in (0, None)
    assert "chat" in err and "31" in err and "invalid_role" in err


def test_methods_and_models_list(capsys):
    for cmd, needle in (("methods", "lora"), ("models", "smollm2-135m")):
        with mock.patch.object(sys, "argv", ["tuneforge", cmd]):
            try:
                main()
            except SystemExit as e:
                assert e.code in (0, None)
        assert needle in capsys.readouterr().err


def test_help_config_lists_documented_keys(capsys):
    with mock.patch.object(sys, "argv", ["tuneforge", "train", "--help-config"]):
        try:
            main()
        except SystemExit as e:
            assert e.code in (0, None)
    err = capsys.readouterr().err
    assert "train.learning_rate" in err and "method.r" in err and "data.truncation" in err
    json.dumps(err)  # printable
