"""Model selection: candidates scored on the validation split, with an estimate, ranked by the metric."""

from __future__ import annotations

import json

from tests.conftest import tiny_config
from tuneforge.experiments import select as S


def test_candidates_are_ranked_by_the_metric_with_estimates(
    tiny_model_dir, tuned_run, capitals_file, tmp_path
):
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "run", "train.num_threads=1")
    # The random tiny model cannot answer; the one already trained on capitals can. A third name fails to load.
    candidates = [str(tiny_model_dir), str(tuned_run / "model"), str(tmp_path / "missing-model")]
    report = S.select(
        cfg, candidates, few_shot=1, max_examples=12, timing=False, out=tmp_path / "sel", show=False
    )
    ranking = report["ranking"]
    assert [r["model"] for r in ranking] == [str(tuned_run / "model"), str(tiny_model_dir)]
    assert [r["rank"] for r in ranking] == [1, 2]
    assert ranking[0]["best"] > ranking[1]["best"]
    assert ranking[0]["val_loss"] < ranking[1]["val_loss"]
    for r in ranking:
        assert set(r["scores"]) == {"zero_shot", "few_shot"}
        assert r["peak_memory_gib"] > 0 and r["params"] > 1e6
    assert report["failed"][0]["model"].endswith("missing-model")
    assert json.loads((tmp_path / "sel" / "select.json").read_text())["ranking"][0]["rank"] == 1
    assert "| 1 |" in (tmp_path / "sel" / "select.md").read_text()
