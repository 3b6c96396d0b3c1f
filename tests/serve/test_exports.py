"""Exports through the service: a tiny model fine-tuned through the API (the official client) is exported
(tuneforge's own routes, through httpx), written and checked by a worker in this process, downloaded and loaded;
bad requests and other tenants get OpenAI-style errors; a dead worker's export is done by the next worker; jobs and
exports take turns; a database from before exports gets the table."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import time

import httpx
import pytest
from sqlalchemy import inspect, select, text

from tests.conftest import capitals_records, write_jsonl
from tests.jobs.service_fixtures import ALICE, BOB, client, live_server, service_settings
from tuneforge.jobs import store
from tuneforge.jobs.store import ExportJob, FineTunedModel, Job
from tuneforge.jobs.worker import Worker

pytestmark = pytest.mark.timeout(300)

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_base):
    """A server with one fine-tuned model of alice's, trained through the API for a few steps."""
    tmp = tmp_path_factory.mktemp("exports")
    settings = service_settings(tmp / "data", tiny_base, export_verify_prompts=8)
    data = write_jsonl(tmp / "capitals.jsonl", capitals_records(48))
    with live_server(settings) as srv:
        c = client(srv)
        train = c.files.create(file=data, purpose="fine-tune")
        job = c.fine_tuning.jobs.create(
            model="tiny",
            training_file=train.id,
            suffix="exp",
            seed=1,
            hyperparameters={"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 1, "lora_rank": 4},
        )
        assert Worker(settings).run(max_jobs=1) == 1
        done = c.fine_tuning.jobs.retrieve(job.id)
        assert done.status == "succeeded", done.error
        yield srv, settings, done.fine_tuned_model


def api(srv, method: str, path: str, key: str = ALICE, **kw) -> httpx.Response:
    return httpx.request(
        method, f"{srv.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=120, **kw
    )


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _export(srv, model: str, **body) -> dict:
    r = api(srv, "POST", f"/models/{model}/exports", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_merged_export_is_checked_downloaded_as_a_tar_and_deleted(service, tmp_path):
    srv, settings, model = service
    exp = _export(srv, model, format="merged")
    assert exp["id"].startswith("export-") and exp["object"] == "export"
    assert (exp["status"], exp["format"], exp["quant"], exp["model"]) == ("queued", "merged", None, model)
    assert exp["verification_status"] is None and exp["files"] == {}
    err = _error(api(srv, "GET", f"/exports/{exp['id']}/content"), 409)
    assert err["code"] == "export_not_ready" and "queued" in err["message"]
    assert [e["id"] for e in api(srv, "GET", "/exports").json()["data"]] == [exp["id"]]

    assert Worker(settings).run(idle_exit=True) == 1
    done = api(srv, "GET", f"/exports/{exp['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["verification_status"] == "passed", done["verification"]
    v = done["verification"]
    assert v["prompts"] == 8 and v["answers_equal"] == 1.0 and v["tokenization_identical"] == 1.0
    assert done["files"] == {"model": "."} and done["bytes"] > 0 and done["finished_at"]
    assert "out" not in done and "run" not in done  # the server's paths stay on the server

    r = api(srv, "GET", f"/exports/{exp['id']}/content")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    root = model.replace(":", "-") + "-merged"
    assert r.headers["content-disposition"] == f'attachment; filename="{root}.tar"'
    assert int(r.headers["content-length"]) == len(r.content) and len(r.content) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        names = set(tar.getnames())
        assert {
            f"{root}/{n}" for n in ("config.json", "model.safetensors", "tokenizer.json", "export.json")
        } <= names
        assert json.loads(tar.extractfile(f"{root}/config.json").read())["model_type"] == "llama"
        tar.extractall(tmp_path, filter="data")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(tmp_path / root).config.num_hidden_layers == 2
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(tmp_path / root).chat_template

    out = settings.exports_dir / exp["id"]
    assert (out / "config.json").is_file()
    r = api(srv, "DELETE", f"/exports/{exp['id']}")
    assert r.json() == {"id": exp["id"], "object": "export", "deleted": True}
    assert not out.exists()
    assert _error(api(srv, "GET", f"/exports/{exp['id']}"), 404)["code"] == "not_found"
    assert api(srv, "GET", "/exports").json()["data"] == []


def test_a_gguf_export_downloads_as_the_gguf_file(service):
    """f16 is written in Python; llama.cpp checks it where llama-cpp-python is installed, else it is unverified."""
    srv, settings, model = service
    exp = _export(srv, model, format="gguf")
    assert exp["quant"] == "f16"  # the format's default, recorded
    assert Worker(settings).run(idle_exit=True) == 1
    done = api(srv, "GET", f"/exports/{exp['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    if HAS_LLAMA_CPP:
        assert done["verification_status"] == "passed", done["verification"]
    else:
        assert done["verification_status"] == "unverified"
        assert "llama-cpp-python" in done["verification"]["skipped"]
    r = api(srv, "GET", f"/exports/{exp['id']}/content")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    name = model.replace(":", "-") + "-gguf-f16.gguf"
    assert f'filename="{name}"' in r.headers["content-disposition"]
    assert r.content[:4] == b"GGUF" and len(r.content) == done["bytes"]
    assert api(srv, "DELETE", f"/exports/{exp['id']}").status_code == 200


@pytest.mark.parametrize("to", ["ollama", "gguf-lora"])
def test_ollama_and_gguf_lora_exports_download_as_a_tar_of_their_files(service, to):
    srv, settings, model = service
    # f32: a tiny random model's top logits are near ties, which q8_0 (Ollama's default) flips; the format is tested
    exp = _export(srv, model, format=to, quant="f32")
    assert Worker(settings).run(idle_exit=True) == 1
    done = api(srv, "GET", f"/exports/{exp['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["verification_status"] == ("passed" if HAS_LLAMA_CPP else "unverified"), done["verification"]
    roles = {"ollama": {"gguf", "modelfile"}, "gguf-lora": {"base", "lora"}}[to]
    assert set(done["files"]) == roles
    r = api(srv, "GET", f"/exports/{exp['id']}/content")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    root = f"{model.replace(':', '-')}-{to}-{done['quant']}"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        names = set(tar.getnames())
        assert {f"{root}/{name}" for name in done["files"].values()} | {f"{root}/export.json"} == names
        for name in done["files"].values():
            data = tar.extractfile(f"{root}/{name}").read()
            if name.endswith(".gguf"):
                assert data[:4] == b"GGUF", name
            else:  # the Modelfile names the GGUF beside it
                assert f"FROM ./{done['files']['gguf']}".encode() in data
    assert api(srv, "DELETE", f"/exports/{exp['id']}").status_code == 200


def test_requests_that_cannot_be_exported_are_refused_and_recorded_nowhere(service):
    srv, _, model = service
    cases = [
        ({"format": "onnx"}, 422, "format", "invalid_value"),
        ({}, 422, "format", "missing_required_parameter"),
        ({"format": "gguf", "bits": 4}, 422, "bits", "unknown_parameter"),
        ({"format": "gguf", "quant": "q3_z"}, 400, "quant", "export_not_supported"),
        ({"format": "merged", "quant": "q8_0"}, 400, "quant", "invalid_value"),
    ]
    if not HAS_LLAMA_CPP:  # the K-quants need llama.cpp's quantizer
        cases.append(({"format": "gguf", "quant": "q4_k_m"}, 400, "quant", "export_not_supported"))
    for body, status, param, code in cases:
        err = _error(api(srv, "POST", f"/models/{model}/exports", json=body), status)
        assert (err["param"], err["code"]) == (param, code), (body, err)
    err = _error(api(srv, "POST", "/models/tiny/exports", json={"format": "gguf"}), 400)
    assert err["code"] == "model_not_exportable" and "Fine-tune it first" in err["message"]
    err = _error(api(srv, "POST", "/models/ft:tiny:alice::nothing/exports", json={"format": "gguf"}), 404)
    assert err["code"] == "model_not_found"
    assert api(srv, "GET", "/exports").json()["data"] == []
    doc = httpx.get(f"{srv.root}/openapi.json").json()
    assert doc["paths"]["/v1/models/{model}/exports"]["post"]["tags"] == ["exports"]
    assert {"/v1/exports", "/v1/exports/{export_id}", "/v1/exports/{export_id}/content"} <= set(doc["paths"])


def test_another_tenant_gets_404_on_every_export_route(service):
    srv, _, model = service
    exp = _export(srv, model, format="merged")
    nowhere = "ft:tiny:bob::nothing"
    mine = _error(api(srv, "POST", f"/models/{model}/exports", BOB, json={"format": "merged"}), 404)
    absent = _error(api(srv, "POST", f"/models/{nowhere}/exports", BOB, json={"format": "merged"}), 404)
    assert mine == {**absent, "message": absent["message"].replace(nowhere, model)}  # alike, but for the id
    for method, path in (
        ("GET", f"/exports/{exp['id']}"),
        ("GET", f"/exports/{exp['id']}/content"),
        ("DELETE", f"/exports/{exp['id']}"),
        ("GET", f"/exports?after={exp['id']}"),
    ):
        err = _error(api(srv, method, path, BOB), 404)
        assert err["code"] == "not_found" and exp["id"] in err["message"], (method, path)
    assert api(srv, "GET", "/exports", BOB).json() == {"object": "list", "data": [], "has_more": False}
    assert _error(httpx.get(f"{srv.url}/exports"), 401)["code"] == "missing_api_key"
    assert api(srv, "GET", f"/exports/{exp['id']}").json()["status"] == "queued"  # untouched
    assert api(srv, "DELETE", f"/exports/{exp['id']}").status_code == 200


def test_a_dead_workers_export_is_done_again_by_the_next_worker(service):
    srv, settings, model = service
    exp = _export(srv, model, format="gguf", quant="q8_0")  # the quickest to write
    worker = Worker(settings)
    dead = store.lease_job(worker.sessions, "worker-dead", 0.2, table=ExportJob)
    assert dead is not None and dead.job_id == exp["id"]
    with store.transaction(worker.sessions) as s:  # it had started, and written part of the export
        s.scalar(select(ExportJob).where(ExportJob.id == exp["id"])).status = "running"
    out = settings.exports_dir / exp["id"]
    out.mkdir()
    (out / "half-written.bin").write_bytes(b"\0" * 10)
    (settings.exports_dir / f".{exp['id']}.tmp-4242").mkdir()
    assert store.lease_job(worker.sessions, "worker-other", 30, table=ExportJob) is None  # still held
    time.sleep(0.3)
    assert worker.run(idle_exit=True) == 1
    done = api(srv, "GET", f"/exports/{exp['id']}").json()
    assert done["status"] == "succeeded" and done["attempts"] == 2, done["error"]
    assert not (out / "half-written.bin").exists() and (out / done["files"]["gguf"]).is_file()
    assert [p.name for p in settings.exports_dir.iterdir()] == [exp["id"]]
    with store.transaction(worker.sessions) as s:  # the dead worker cannot write over the result
        assert not store.finish_lease(s, dead, status="failed")
    assert api(srv, "DELETE", f"/exports/{exp['id']}").status_code == 200


def test_an_export_deleted_while_it_runs_leaves_no_files(service, monkeypatch):
    import tuneforge.recipes.export as recipe

    srv, settings, model = service
    exp = _export(srv, model, format="gguf", quant="q8_0")
    real = recipe.export_run

    def deleted_meanwhile(*a, **kw):
        assert api(srv, "DELETE", f"/exports/{exp['id']}").status_code == 200
        return real(*a, **kw)

    monkeypatch.setattr(recipe, "export_run", deleted_meanwhile)
    assert Worker(settings).run(idle_exit=True) == 1
    assert list(settings.exports_dir.iterdir()) == []  # the worker removed what it wrote
    assert _error(api(srv, "GET", f"/exports/{exp['id']}"), 404)["code"] == "not_found"


def test_jobs_and_exports_take_turns_and_each_failure_says_why(tmp_path, tiny_model_dir, monkeypatch):
    """Rows that fail at once: jobs whose training file is gone, exports of a model whose run is not a run folder,
    of a deleted model, of one whose export crashes, and one whose workers kept dying."""
    settings = service_settings(tmp_path / "data", tiny_model_dir)
    worker = Worker(settings)
    with store.transaction(worker.sessions) as s:
        s.add(
            FineTunedModel(
                id="ft:tiny:alice::x",
                owner="alice",
                base="tiny",
                job_id="ftjob-x",
                run_dir=str(tmp_path / "not-a-run"),
                training_type="lora",
                created_at=0,
            )
        )

    def add(kind: str, **kw) -> str:
        with store.transaction(worker.sessions) as s:
            if kind == "job":
                row = Job(
                    id=store.new_id("ftjob"),
                    owner="alice",
                    model="tiny",
                    training_file="file-gone",
                    seed=0,
                    hyperparameters={},
                    status="validating_files",
                    created_at=0,
                    failures=[],
                    result_files=[],
                    extras={},
                )
            else:
                export_id = store.new_id("export")
                row = ExportJob(
                    id=export_id,
                    owner="alice",
                    model=kw.pop("model", "ft:tiny:alice::x"),
                    format="merged",
                    status="queued",
                    out_dir=str(settings.exports_dir / export_id),
                    created_at=0,
                    **kw,
                )
            s.add(row)
            return row.id

    order = [add("job"), add("job"), add("export"), add("export")]

    def finished() -> list[str]:
        with worker.sessions() as s:
            rows = [*s.scalars(select(Job)), *s.scalars(select(ExportJob))]
        return [r.id for r in rows if r.status == "failed"]

    seen: list[str] = []
    while worker.run_one():
        seen.append(next(i for i in finished() if i not in seen))
    assert seen == [order[0], order[2], order[1], order[3]]  # a job, an export, a job, an export

    with worker.sessions() as s:
        err = s.scalar(select(ExportJob.error).where(ExportJob.id == order[2]))
    assert err["code"] == "export_not_supported" and "not a tuneforge run folder" in err["message"]
    assert "give the run_dir of a run" in err["message"]  # the library's fix comes with it

    def boom(*a, **k):
        raise RuntimeError("secret detail")

    monkeypatch.setattr("tuneforge.recipes.export.export_run", boom)
    crashed = add("export")
    deleted = add("export", model="ft:tiny:alice::deleted")
    dying = add("export", attempts=settings.max_attempts)
    assert worker.run(idle_exit=True) == 3
    with worker.sessions() as s:
        errors = {r.id: r.error for r in s.scalars(select(ExportJob).where(ExportJob.status == "failed"))}
    assert errors[crashed]["code"] == "internal_error" and "RuntimeError" in errors[crashed]["message"]
    assert "secret detail" not in errors[crashed]["message"]  # in the server's log, not in the API
    assert errors[deleted]["code"] == "model_not_found" and "was deleted" in errors[deleted]["message"]
    assert errors[dying]["code"] == "max_attempts_exceeded"
    assert f"started {settings.max_attempts} times" in errors[dying]["message"]


def test_a_database_from_before_exports_gets_the_table_and_keeps_its_jobs(db_url):
    engine = store.make_engine(db_url)
    store.init_db(engine)
    factory = store.session_factory(engine)
    with store.transaction(factory) as s:
        s.add(
            Job(
                id="ftjob-old",
                owner="alice",
                model="tiny",
                training_file="file-x",
                seed=0,
                hyperparameters={},
                status="succeeded",
                created_at=0,
                failures=[],
                result_files=[],
                extras={},
            )
        )
    with engine.begin() as conn:  # the database as a server without exports made it
        conn.execute(text("DROP TABLE exports"))
    assert "exports" not in inspect(engine).get_table_names()
    store.init_db(engine)  # the server starting on the old database
    assert "exports" in inspect(engine).get_table_names()
    with store.transaction(factory) as s:
        s.add(
            ExportJob(
                id="export-1",
                owner="alice",
                model="m",
                format="gguf",
                status="queued",
                out_dir="/x",
                created_at=0,
            )
        )
    with factory() as s:
        assert s.scalar(select(Job.status).where(Job.id == "ftjob-old")) == "succeeded"
        assert s.scalar(select(ExportJob.attempts).where(ExportJob.id == "export-1")) == 0
    engine.dispose()
