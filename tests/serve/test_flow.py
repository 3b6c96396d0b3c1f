"""The whole flow through the official `openai` client against a real uvicorn server: upload → job → events →
checkpoints → results file → models → streaming chat on the fine-tuned id, the base model on the same weights."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from tests.conftest import capitals_records, write_jsonl
from tests.jobs.service_fixtures import ALICE, client, live_server, service_settings, wait_for

pytestmark = pytest.mark.timeout(300)


def test_upload_train_watch_and_chat_with_the_official_client(tmp_path, tiny_base, capitals_jsonl):
    from tuneforge.jobs.worker import Worker

    settings = service_settings(tmp_path / "data", tiny_base)
    val_path = write_jsonl(tmp_path / "val.jsonl", capitals_records(16, seed=1))
    with live_server(settings) as srv:
        c = client(srv)
        with open(capitals_jsonl, "rb") as fh:
            train = c.files.create(file=fh, purpose="fine-tune")
        val = c.files.create(file=("val.jsonl", val_path.read_bytes()), purpose="fine-tune")
        assert train.filename == "capitals.jsonl" and train.bytes == capitals_jsonl.stat().st_size
        assert train.purpose == "fine-tune" and train.id.startswith("file-")
        assert c.files.content(train.id).content == capitals_jsonl.read_bytes()
        assert {f.id for f in c.files.list()} == {train.id, val.id}

        job = c.fine_tuning.jobs.create(
            model="tiny",
            training_file=train.id,
            validation_file=val.id,
            suffix="caps",
            seed=3,
            method={
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "n_epochs": 5,
                        "batch_size": "auto",
                        "learning_rate_multiplier": 1,
                        "lora_rank": 8,  # a tuneforge extension, passed through by the client
                    }
                },
            },
            extra_body={"training_type": "lora"},
        )
        assert job.status == "validating_files" and job.model == "tiny"
        assert job.hyperparameters.batch_size == "auto"

        worker = Worker(settings)
        t = threading.Thread(target=worker.run, kwargs={"max_jobs": 1}, daemon=True)
        t.start()
        done = wait_for(
            lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
            180,
            "the job to finish",
        )
        t.join(10)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"ft:tiny:alice:caps:{job.id.removeprefix('ftjob-')}"
        assert done.hyperparameters.batch_size == 8 and done.hyperparameters.n_epochs == 5  # "auto" resolved
        assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at

        events = list(c.fine_tuning.jobs.list_events(job.id, limit=7))  # pages through every event
        messages = [e.message for e in events]
        assert any("Validating training file" in m for m in messages)
        assert any("64 training examples, 16 validation examples" in m for m in messages)
        assert messages[0] == "The job has successfully completed"  # newest first
        train_rows = sorted(
            (
                e.data
                for e in events
                if e.type == "metrics" and "train_loss" in e.data and "valid_loss" not in e.data
            ),
            key=lambda d: d["step"],
        )
        val_rows = sorted(
            (e.data for e in events if e.type == "metrics" and "valid_loss" in e.data),
            key=lambda d: d["step"],
        )
        assert [r["step"] for r in train_rows] == list(range(1, 41))
        assert train_rows[-1]["train_loss"] < 0.8 * train_rows[0]["train_loss"]
        assert all(0 <= r["train_mean_token_accuracy"] <= 1 for r in train_rows)
        assert val_rows and all(r["valid_mean_token_accuracy"] is not None for r in val_rows)
        assert val_rows[-1]["valid_loss"] < val_rows[0]["valid_loss"]

        ckpts = list(c.fine_tuning.jobs.checkpoints.list(job.id))
        assert ckpts and ckpts[0].step_number == 40  # newest first
        assert ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-40"
        assert ckpts[0].metrics.train_loss is not None and ckpts[0].metrics.valid_loss is not None

        (result_id,) = done.result_files
        result = c.files.retrieve(result_id)
        assert result.purpose == "fine-tune-results"
        lines = c.files.content(result_id).text.splitlines()
        assert lines[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
        assert len(lines) == 41

        ids = [m.id for m in c.models.list()]
        assert "tiny" in ids and done.fine_tuned_model in ids
        assert c.models.retrieve(done.fine_tuned_model).owned_by == "alice"

        # streaming chat on the fine-tuned id, with usage in the last chunk
        ask = [{"role": "user", "content": "Capital of Peru?"}]
        chunks = list(
            c.chat.completions.create(
                model=done.fine_tuned_model,
                messages=ask,
                stream=True,
                temperature=0,
                max_tokens=8,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
        assert len(finish) == 1 and text
        whole = c.chat.completions.create(
            model=done.fine_tuned_model, messages=ask, temperature=0, max_tokens=8
        )
        assert whole.choices[0].message.content == text
        assert whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

        # the base model answers from the same weights with the adapter off, and differently
        base = c.chat.completions.create(model="tiny", messages=ask, temperature=0, max_tokens=8)
        assert base.choices[0].message.content != text
        health = httpx.get(f"{srv.root}/health/ready", headers={"Authorization": f"Bearer {ALICE}"}).json()
        assert health["models_loaded"] == {"base:tiny": [done.fine_tuned_model]}
        assert srv.app.state.engine.loads["base:tiny"] == 1  # one base copy served both

        # sampling: n choices, a seed reproduces, stop strings cut
        kw = dict(model=done.fine_tuned_model, messages=ask, temperature=1.5, max_tokens=6, n=3)
        a = c.chat.completions.create(seed=7, **kw)
        b = c.chat.completions.create(seed=7, **kw)
        assert len(a.choices) == 3 and [x.message.content for x in a.choices] == [
            x.message.content for x in b.choices
        ]
        assert [x.index for x in a.choices] == [0, 1, 2]
        stop = text[2:4]
        cut = c.chat.completions.create(
            model=done.fine_tuned_model, messages=ask, temperature=0, max_tokens=8, stop=[stop]
        )
        assert cut.choices[0].message.content == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"

        # text completions, streamed and not
        comp = c.completions.create(
            model=done.fine_tuned_model, prompt="Lima is", max_tokens=5, temperature=0
        )
        assert comp.usage.completion_tokens <= 5 and comp.choices[0].finish_reason in ("stop", "length")
        streamed = list(
            c.completions.create(
                model=done.fine_tuned_model, prompt="Lima is", max_tokens=5, temperature=0, stream=True
            )
        )
        assert "".join(s.choices[0].text for s in streamed) == comp.choices[0].text

        # the raw SSE ends with [DONE]
        with httpx.stream(
            "POST",
            f"{srv.url}/chat/completions",
            headers={"Authorization": f"Bearer {ALICE}"},
            json={"model": "tiny", "messages": ask, "stream": True, "max_tokens": 3},
        ) as r:
            lines = [ln for ln in r.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["object"] == "chat.completion.chunk"

        # deleting the model: gone from the list, 404 afterwards
        assert c.models.delete(done.fine_tuned_model).deleted
        assert done.fine_tuned_model not in [m.id for m in c.models.list()]


def test_a_full_fine_tune_is_served_as_its_own_model(tmp_path, tiny_model_dir, capitals_jsonl):
    """training_type "full" (a tuneforge extension, sent with extra_body): full weights, its own copy in memory."""
    from tuneforge.jobs.worker import Worker

    settings = service_settings(tmp_path / "data", tiny_model_dir)
    with live_server(settings) as srv:
        c = client(srv)
        train = c.files.create(file=capitals_jsonl, purpose="fine-tune")
        job = c.fine_tuning.jobs.create(
            model="tiny",
            training_file=train.id,
            hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 3},
            extra_body={"training_type": "full"},
        )
        assert job.training_type == "full"
        Worker(settings).run(max_jobs=1)
        done = c.fine_tuning.jobs.retrieve(job.id)
        assert done.status == "succeeded", done.error
        assert done.hyperparameters.n_epochs == 3 and done.hyperparameters.learning_rate_multiplier == 3
        run = settings.runs_dir / job.id
        assert (run / "model" / "model.safetensors").is_file() and not (run / "adapter").exists()
        ask = [{"role": "user", "content": "Capital of Japan?"}]
        tuned = c.chat.completions.create(
            model=done.fine_tuned_model, messages=ask, temperature=0, max_tokens=6
        )
        base = c.chat.completions.create(model="tiny", messages=ask, temperature=0, max_tokens=6)
        assert tuned.choices[0].message.content != base.choices[0].message.content
        assert set(srv.app.state.engine.loaded()) == {"base:tiny", f"full:{done.fine_tuned_model}"}


def _openai_dpo_rows(n: int, seed: int) -> list[dict]:
    """The preference pairs of tests/train in OpenAI's DPO upload shape."""
    from tests.train.test_preference import preference_rows

    return [
        {
            "input": {"messages": [{"role": "user", "content": r["prompt"]}]},
            "preferred_output": [{"role": "assistant", "content": r["chosen"]}],
            "non_preferred_output": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in preference_rows(n, seed)
    ]


def test_dpo_job_learns_from_feedback_pairs_and_mismatched_files_are_refused(tmp_path, tiny_base):
    """method.type dpo as OpenAI documents it: pairs in OpenAI's upload shape, beta among the hyperparameters;
    the held-out preference accuracy rises. A DPO job on chat data, a supervised job on pairs and DPO with full
    weights fail with what to do instead."""
    from tuneforge.jobs.worker import Worker

    settings = service_settings(tmp_path / "data", tiny_base)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", _openai_dpo_rows(48, 0))
    held_out = write_jsonl(tmp_path / "pairs-val.jsonl", _openai_dpo_rows(16, 1))
    chat = write_jsonl(tmp_path / "chat.jsonl", capitals_records(16))
    with live_server(settings) as srv:
        c = client(srv)
        train = c.files.create(file=("pairs.jsonl", pairs.read_bytes()), purpose="fine-tune")
        val = c.files.create(file=("pairs-val.jsonl", held_out.read_bytes()), purpose="fine-tune")
        chat_file = c.files.create(file=("chat.jsonl", chat.read_bytes()), purpose="fine-tune")
        dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 3}}}
        job = c.fine_tuning.jobs.create(
            model="tiny", training_file=train.id, validation_file=val.id, method=dpo
        )
        assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.5
        on_chat = c.fine_tuning.jobs.create(model="tiny", training_file=chat_file.id, method=dpo)
        supervised_on_pairs = c.fine_tuning.jobs.create(model="tiny", training_file=train.id)
        r = httpx.post(
            f"{srv.url}/fine_tuning/jobs",
            headers={"Authorization": f"Bearer {ALICE}"},
            json={"model": "tiny", "training_file": train.id, "method": dpo, "training_type": "full"},
        )
        assert r.status_code == 400 and "training_type 'lora'" in r.json()["error"]["message"]

        worker = Worker(settings)
        assert worker.run(idle_exit=True) == 3
        done = c.fine_tuning.jobs.retrieve(job.id)
        assert done.status == "succeeded", done.error
        assert done.method.dpo.hyperparameters.batch_size == 8  # "auto" resolved
        evals = sorted(
            (
                e.data
                for e in c.fine_tuning.jobs.list_events(job.id, limit=100)
                if e.data and "valid_loss" in e.data
            ),
            key=lambda d: d["step"],
        )
        assert evals[-1]["valid_reward_accuracy"] >= 0.9
        assert evals[-1]["valid_reward_margin"] > evals[0]["valid_reward_margin"]

        failed = c.fine_tuning.jobs.retrieve(on_chat.id)
        assert failed.status == "failed" and "needs preference pairs" in failed.error.message
        assert "holds chat records" in failed.error.message
        failed = c.fine_tuning.jobs.retrieve(supervised_on_pairs.id)
        assert failed.status == "failed" and 'method {"type": "dpo"}' in failed.error.message


def test_kto_job_trains_on_rated_answers_and_refuses_chat_files(tmp_path, tiny_base):
    """method.type kto (tuneforge): answers rated up or down, the weights among the hyperparameters; the held-out
    KTO loss falls below the untrained model's. A kto job on plain conversations fails with what it needs."""
    from tests.train.test_kto import kto_rows
    from tuneforge.jobs.worker import Worker

    settings = service_settings(tmp_path / "data", tiny_base)
    rated = write_jsonl(tmp_path / "rated.jsonl", kto_rows(64, 0))
    chat = write_jsonl(tmp_path / "chat.jsonl", capitals_records(16))
    with live_server(settings) as srv:
        c = client(srv)
        train = c.files.create(file=("rated.jsonl", rated.read_bytes()), purpose="fine-tune")
        chat_file = c.files.create(file=("chat.jsonl", chat.read_bytes()), purpose="fine-tune")
        kto = {
            "type": "kto",
            "kto": {
                "hyperparameters": {
                    "beta": 1.0,
                    "undesirable_weight": 1.2,
                    "n_epochs": 2,
                    "learning_rate_multiplier": 10,
                }
            },
        }
        job = c.fine_tuning.jobs.create(model="tiny", training_file=train.id, method=kto)
        assert job.method.type == "kto"  # (the openai client keeps our kto section as a plain dict)
        assert job.method.kto["hyperparameters"]["undesirable_weight"] == 1.2
        on_chat = c.fine_tuning.jobs.create(model="tiny", training_file=chat_file.id, method=kto)
        assert Worker(settings).run(idle_exit=True) == 2
        done = c.fine_tuning.jobs.retrieve(job.id)
        assert done.status == "succeeded", done.error
        evals = sorted(
            (
                e.data
                for e in c.fine_tuning.jobs.list_events(job.id, limit=100)
                if e.data and "valid_loss" in e.data
            ),
            key=lambda d: d["step"],
        )
        # Untrained, every item's loss is half its weight (policy = reference), so a mean of at least 0.5 with
        # weights >= 1: the best held-out loss below that is a model that learned from the ratings. (Comparing the
        # last evaluation with the first is not: with a 10x rate it can peak at the first one and early-stop.)
        assert min(e["valid_loss"] for e in evals) < 0.5
        failed = c.fine_tuning.jobs.retrieve(on_chat.id)
        assert failed.status == "failed" and "needs answers rated up or down" in failed.error.message


def test_reinforcement_job_trains_grpo_on_openai_rows_with_a_grader(tmp_path, tiny_base):
    """method.type reinforcement, as OpenAI's fine-tuning API names it: rows of a prompt and a reference field, a
    string_check grader on that field → GRPO with exact_match. The job succeeds with OpenAI's reward metrics in its
    events and echoes its grader; graders without a built-in reward are 400s that say why; a row with nothing to
    grade against fails the job by line."""
    from tuneforge.jobs.worker import Worker

    settings = service_settings(tmp_path / "data", tiny_base)
    rows = [  # OpenAI's shape: the prompt's turns, and the reference as an item field
        {"messages": r["messages"][:-1], "reference_answer": r["messages"][-1]["content"]}
        for r in capitals_records(16)
    ]
    rft = write_jsonl(tmp_path / "rft.jsonl", rows)
    broken = write_jsonl(tmp_path / "broken.jsonl", rows[:6] + [{"messages": rows[0]["messages"]}])
    grader = {
        "type": "string_check",
        "name": "city",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference_answer}}",
        "operation": "eq",
    }
    method = {
        "type": "reinforcement",
        "reinforcement": {
            "grader": grader,
            "hyperparameters": {
                "n_epochs": 1,
                "batch_size": 4,
                "eval_interval": 1,
                "num_generations": 2,
                "max_new_tokens": 4,
            },
        },
    }
    with live_server(settings) as srv:
        c = client(srv)
        train = c.files.create(file=("rft.jsonl", rft.read_bytes()), purpose="fine-tune")
        bad = c.files.create(file=("broken.jsonl", broken.read_bytes()), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model="tiny", training_file=train.id, method=method)
        assert job.method.type == "reinforcement"
        on_broken = c.fine_tuning.jobs.create(model="tiny", training_file=bad.id, method=method)
        for refused, says in [
            ({"type": "python", "source": "def grade(sample, item): return 1.0"}, "runs the caller's code"),
            ({"type": "multi", "graders": {"a": grader}, "calculate_output": "a * a"}, "not a weighted sum"),
        ]:
            with pytest.raises(openai.BadRequestError) as e:
                c.fine_tuning.jobs.create(
                    model="tiny",
                    training_file=train.id,
                    method={**method, "reinforcement": {"grader": refused}},
                )
            assert e.value.body["code"] == "unsupported_grader" and says in e.value.message
            assert e.value.body["param"] == "method.reinforcement.grader"
        r = httpx.post(
            f"{srv.url}/fine_tuning/jobs",
            headers={"Authorization": f"Bearer {ALICE}"},
            json={"model": "tiny", "training_file": train.id, "method": method, "training_type": "full"},
        )
        assert r.status_code == 400 and "Reinforcement fine-tuning (GRPO)" in r.json()["error"]["message"]

        assert Worker(settings).run(idle_exit=True) == 2
        done = c.fine_tuning.jobs.retrieve(job.id)
        assert done.status == "succeeded", done.error
        assert (
            done.method.reinforcement.grader.model_dump(exclude_none=True) == grader
        )  # parsed by the client
        assert done.method.reinforcement.hyperparameters.eval_interval == 1
        assert done.hyperparameter_extensions["num_generations"] == 2
        data = [e.data for e in c.fine_tuning.jobs.list_events(job.id, limit=200) if e.data]
        train_rows = [d for d in data if "train_reward_mean" in d]
        valid_rows = [d for d in data if "valid_reward_mean" in d]
        assert train_rows and valid_rows
        assert all(0.0 <= d["train_reward_mean"] <= 1.0 for d in train_rows)
        assert done.fine_tuned_model is not None

        failed = c.fine_tuning.jobs.retrieve(on_broken.id)
        assert failed.status == "failed" and "line 7" in failed.error.message
        assert "'reference_answer' field" in failed.error.message
