"""Bad requests, other tenants, overload and readiness — all answered in OpenAI's error shape, as the official
client expects them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import capitals_records, write_jsonl
from tests.jobs.service_fixtures import ALICE, BOB, client, live_server, service_settings, wait_for
from tuneforge.jobs import store


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    data = tmp_path_factory.mktemp("svc")
    settings = service_settings(data, tiny_model_dir, max_upload_bytes=50_000, max_n=4)
    with live_server(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def train_file(server, tmp_path_factory) -> str:
    path = write_jsonl(tmp_path_factory.mktemp("d") / "train.jsonl", capitals_records(20))
    return client(server).files.create(file=path, purpose="fine-tune").id


def _error(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_missing_or_wrong_api_key_is_401(server):
    r = httpx.get(f"{server.url}/models")
    assert r.status_code == 401 and _error(r)["code"] == "missing_api_key"
    r = httpx.get(f"{server.url}/models", headers={"Authorization": "Bearer sk-not-a-key-123"})
    err = _error(r)
    assert r.status_code == 401 and err["code"] == "invalid_api_key" and "sk-n...23" in err["message"]
    with pytest.raises(openai.AuthenticationError):
        client(server, key="sk-wrong-key-0000").models.list()


def test_tenants_see_only_their_own_files_jobs_and_models(server, train_file):
    alice, bob = client(server, ALICE), client(server, BOB)
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=train_file)
    model_id = f"ft:tiny:alice::{job.id.removeprefix('ftjob-')}"
    with store.transaction(server.app.state.sessions) as s:  # as if the job had finished
        s.add(
            store.FineTunedModel(
                id=model_id,
                owner="alice",
                base="tiny",
                job_id=job.id,
                run_dir="/nowhere",
                training_type="lora",
                created_at=int(time.time()),
            )
        )
    for call in (
        lambda: bob.files.retrieve(train_file),
        lambda: bob.files.content(train_file),
        lambda: bob.files.delete(train_file),
        lambda: bob.fine_tuning.jobs.retrieve(job.id),
        lambda: bob.fine_tuning.jobs.cancel(job.id),
        lambda: bob.fine_tuning.jobs.pause(job.id),
        lambda: list(bob.fine_tuning.jobs.list_events(job.id)),
        lambda: list(bob.fine_tuning.jobs.checkpoints.list(job.id)),
        lambda: bob.models.retrieve(model_id),
        lambda: bob.models.delete(model_id),
        lambda: bob.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}]),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert list(bob.files.list()) == [] and list(bob.fine_tuning.jobs.list()) == []
    assert model_id not in [m.id for m in bob.models.list()] and model_id in [
        m.id for m in alice.models.list()
    ]
    with pytest.raises(openai.BadRequestError) as e:  # someone else's file cannot be trained on
        bob.fine_tuning.jobs.create(model="tiny", training_file=train_file)
    assert e.value.body["param"] == "training_file"
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
    alice.fine_tuning.jobs.cancel(job.id)


def test_job_controls_and_pagination_without_a_worker(server, train_file):
    c = client(server)
    jobs = [
        c.fine_tuning.jobs.create(model="tiny", training_file=train_file, suffix=f"s{i}") for i in range(3)
    ]
    first = c.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == [jobs[2].id, jobs[1].id] and first.has_more
    assert c.fine_tuning.jobs.list(limit=2, after=jobs[1].id).data[0].id == jobs[0].id  # older jobs follow
    assert {jobs[0].id, jobs[1].id, jobs[2].id} <= {
        j.id for j in c.fine_tuning.jobs.list(limit=1)
    }  # auto-paging
    assert c.fine_tuning.jobs.pause(jobs[0].id).status == "paused"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.pause(jobs[0].id)
    assert c.fine_tuning.jobs.resume(jobs[0].id).status == "queued"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.resume(jobs[1].id)
    assert e.value.body["code"] == "invalid_job_state"
    for j in jobs:
        assert c.fine_tuning.jobs.cancel(j.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(jobs[0].id)
    events = [e.message for e in c.fine_tuning.jobs.list_events(jobs[0].id)]
    assert events[:3] == ["Job cancelled", "Job resumed", "Job paused"]


def test_bad_requests_are_400_404_413_or_422_with_a_clear_message(server, train_file, tmp_path):
    c = client(server)
    auth = {"Authorization": f"Bearer {ALICE}"}
    r = httpx.post(
        f"{server.url}/chat/completions",
        headers={**auth, "Content-Type": "application/json"},
        content=b'{"model": "tiny", "messages": [',
    )
    assert r.status_code == 400 and _error(r)["code"] == "invalid_json"
    r = httpx.post(f"{server.url}/chat/completions", headers=auth, json={"model": "tiny"})
    err = _error(r)
    assert r.status_code == 422 and err["param"] == "messages" and err["code"] == "missing_required_parameter"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], extra_body={"frequency_penaltyy": 1}
        )
    assert "Unrecognized request argument" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found" and "gpt-9" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=5)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="gpt-9", training_file=train_file)
    assert e.value.body["code"] == "model_not_available"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model="tiny", training_file=train_file, method={"type": "reinforcement"})
    assert e.value.body["code"] == "missing_grader" and "method.reinforcement.grader" in e.value.message
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.fine_tuning.jobs.create(
            model="tiny", training_file=train_file, hyperparameters={"n_epochs": "lots"}
        )
    assert e.value.body["param"].startswith("hyperparameters.n_epochs")
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.create(model="tiny", training_file="file-nope")
    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("notes.txt", b"hello"), purpose="fine-tune")
    assert e.value.body["code"] == "invalid_file_format"
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.APIStatusError) as e:
        c.files.create(file=("big.jsonl", b"x" * 200_000), purpose="fine-tune")
    assert e.value.status_code == 413 and e.value.body["code"] == "file_too_large"
    r = httpx.get(f"{server.url}/no/such/route", headers=auth)
    assert r.status_code == 404 and "Unknown request URL" in _error(r)["message"]
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve("file-doesnotexist")
    with pytest.raises(openai.PermissionDeniedError):
        c.models.delete("tiny")


def test_stored_file_names_never_come_from_the_client(server, tmp_path):
    c = client(server)
    f = c.files.create(file=("../../../etc/evil.jsonl", b'{"text": "x"}\n'), purpose="fine-tune")
    assert f.filename == "evil.jsonl"
    with server.app.state.sessions() as s:
        row = s.get(store.File, s.scalar(store.select(store.File.pk).where(store.File.id == f.id)))
    stored = Path(row.path)
    assert stored.parent == server.app.state.settings.files_dir and stored.name == f"{f.id}.jsonl"
    assert c.files.delete(f.id).deleted and not stored.exists()


def test_prompt_plus_max_tokens_beyond_the_context_window_is_400(server):
    c = client(server)
    long = " ".join(["word"] * 600)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}])
    assert (
        e.value.body["code"] == "context_length_exceeded"
        and "maximum context length is 512" in e.value.message
    )
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=600)
    assert e.value.body["code"] == "context_length_exceeded" and "600 in the completion" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt=long, max_tokens=10)
    assert e.value.body["param"] == "prompt"
    ok = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert ok.usage.completion_tokens <= 3


def test_health_reports_readiness_and_the_openapi_document_describes_the_api(server):
    r = httpx.get(f"{server.root}/health")  # liveness: no key, nothing told
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(f"{server.root}/health/ready", headers={"Authorization": f"Bearer {ALICE}"})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok" and body["database"] == "ok"
    assert {"workers", "queued_jobs", "running_jobs", "models_loaded", "generations_waiting"} <= set(body)
    doc = httpx.get(f"{server.root}/openapi.json").json()
    paths = doc["paths"]
    for path, method in [
        ("/v1/files", "post"),
        ("/v1/files", "get"),
        ("/v1/files/{file_id}", "delete"),
        ("/v1/files/{file_id}/content", "get"),
        ("/v1/fine_tuning/jobs", "post"),
        ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", "post"),
        ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause", "post"),
        ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume", "post"),
        ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", "get"),
        ("/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", "get"),
        ("/v1/models", "get"),
        ("/v1/models/{model}", "delete"),
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/health", "get"),
        ("/health/ready", "get"),
    ]:
        assert method in paths[path], (path, method)
    schemas = doc["components"]["schemas"]
    assert "training_type" in schemas["JobCreate"]["properties"]
    assert "ChatCompletionChunk" in schemas and "HTTPBearer" in doc["components"]["securitySchemes"]
    chat = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert chat["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    assert chat["text/event-stream"]["schema"]["$ref"].endswith("/ChatCompletionChunk")
    refs = {m[len("#/components/schemas/") :] for m in _refs(doc)}
    assert refs <= set(schemas)  # every reference resolves


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_beyond_the_generation_queue_requests_get_429_with_retry_after(tmp_path, tiny_model_dir):
    """One generation at a time and no queue: a second request while a long one streams is refused at once;
    closing the long stream cancels its generation and frees the slot."""
    from transformers import AutoConfig

    long_ctx = tmp_path / "long"  # the same tiny model with a long context, so one generation can run a while
    import shutil

    shutil.copytree(tiny_model_dir, long_ctx)
    cfg = AutoConfig.from_pretrained(long_ctx)
    cfg.max_position_embeddings = 16384
    cfg.save_pretrained(long_ctx)
    settings = service_settings(
        tmp_path / "data", long_ctx, max_concurrent_generations=1, max_queued_generations=0, retry_after_s=3
    )
    with live_server(settings) as srv:
        c = client(srv)
        ask = dict(model="tiny", prompt="Once upon a time", temperature=0)
        c.completions.create(max_tokens=2, **ask)  # load the model
        got_first = threading.Event()
        with (
            httpx.Client(timeout=60) as h,
            h.stream(
                "POST",
                f"{srv.url}/completions",
                headers={"Authorization": f"Bearer {ALICE}"},
                json={**ask, "max_tokens": 16000, "stream": True},
            ) as long_stream,
        ):
            lines = long_stream.iter_lines()
            assert next(lines).startswith("data: ")
            got_first.set()
            r = httpx.post(
                f"{srv.url}/completions",
                headers={"Authorization": f"Bearer {ALICE}"},
                json={**ask, "max_tokens": 2},
            )
            assert r.status_code == 429 and r.headers["Retry-After"] == "3"
            assert _error(r)["code"] == "server_overloaded"
            with pytest.raises(openai.RateLimitError):
                c.completions.create(max_tokens=2, **ask)
            ready = httpx.get(f"{srv.root}/health/ready", headers={"Authorization": f"Bearer {ALICE}"})
            assert json.loads(ready.text)["generations_running"] == 1
        # the client went away: its generation stops and the slot is free again
        ok = wait_for(lambda: _try(c, ask), 30, "the slot to be freed")
        assert ok.usage.completion_tokens <= 2
        assert srv.app.state.engine.active == 0


def _try(c, ask):
    try:
        return c.completions.create(max_tokens=2, **ask)
    except openai.RateLimitError:
        return None
