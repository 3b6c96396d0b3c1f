"""The service's `training_type` picks any language-model method; method options apply where they mean something."""

from __future__ import annotations

import pytest


def test_service_jobs_accept_every_language_model_method(tmp_path):
    from tuneforge.jobs import openai
    from tuneforge.serve.schemas import JobCreate

    def job_cfg(training_type: str):
        return openai.run_config(
            run_dir=tmp_path / training_type,
            base_source="smollm2-135m",
            train_path=tmp_path / "t.jsonl",
            validation_path=None,
            training_type=training_type,
            resolved={"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 1.0},
            extras={"lora_rank": 4, "max_steps": 5},
            seed=0,
            base_learning_rate=2e-4,
            max_length=256,
        )

    dora = job_cfg("dora")
    assert dora.method.name == "dora" and dora.method.r == 4 and dora.train.max_steps == 5
    ia3 = job_cfg("ia3")  # lora_rank means nothing to IA3: ignored, not an error
    assert ia3.method.name == "ia3" and ia3.train.max_steps == 5
    assert JobCreate(model="m", training_file="f", training_type="prefix").training_type == "prefix"
    with pytest.raises(ValueError, match="unknown training_type 'classifier'"):
        JobCreate(model="m", training_file="f", training_type="classifier")
