"""The read routes the console needs, through plain HTTP and the official client: a file's report
(GET /v1/files/{id}/inspect) and a job's estimate (POST /v1/fine_tuning/jobs/estimate); the console's page and
the API docs are served from the package."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import capitals_records, write_jsonl
from tests.jobs.service_fixtures import ALICE, BOB, client, live_server, service_settings

AUTH = {"Authorization": f"Bearer {ALICE}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    settings = service_settings(tmp_path_factory.mktemp("svc"), tiny_model_dir)
    with live_server(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def files(server, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("files")
    records = capitals_records(24)
    good = write_jsonl(d / "capitals.jsonl", [*records, records[0]])  # one exact duplicate
    bad = d / "broken.jsonl"
    bad.write_text(good.read_text().splitlines()[0] + "\n" + '{"messages": [{"role": "user"\n' + "[1, 2]\n")
    c = client(server)
    return {
        "good": c.files.create(file=good, purpose="fine-tune").id,
        "bad": c.files.create(file=bad, purpose="fine-tune").id,
    }


def inspect(server, file_id: str, key: str = ALICE, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(f"{server.url}/files/{file_id}/inspect", headers=headers, params=params, timeout=60)


def test_inspect_reports_counts_tokens_and_the_records_as_trained(server, files):
    r = inspect(server, files["good"], model="tiny", preview=2)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["format"] == "chat" and report["examples"] == 25 and report["rows"] == 25
    assert report["lengths"]["unit"] == "tokens" and sum(report["lengths"]["histogram"]["counts"]) == 25
    assert report["duplicates"]["exact"] == 1 and report["duplicates"]["pairs"][0]["where"] == "line 25"
    first = report["preview"][0]
    assert first["where"] == "line 1" and first["messages"][-1]["role"] == "assistant"
    assert "<|im_start|>assistant" in first["rendered"]  # SmolLM2's template, as training renders it
    assert len(report["preview"]) == 2
    # without a model: characters, no rendering
    plain = inspect(server, files["good"]).json()
    assert plain["lengths"]["unit"] == "characters" and "rendered" not in plain["preview"][0]


def test_inspect_places_problems_by_line_and_never_shows_the_servers_path(server, files):
    report = inspect(server, files["bad"]).json()
    assert report["rejects"]["total"] == 2
    places = [item["where"] for item in report["rejects"]["items"]]
    assert places == ["line 2", "line 3"], report["rejects"]
    text = json.dumps(report)
    assert str(server.app.state.settings.files_dir) not in text and "broken.jsonl" in text


def test_inspect_is_per_tenant_and_checks_its_model(server, files):
    r = inspect(server, files["good"], key=BOB)
    assert r.status_code == 404 and r.json()["error"]["param"] == "file_id"
    r = inspect(server, files["good"], model="gpt-4o")
    assert r.status_code == 400 and "tiny" in r.json()["error"]["message"]
    assert inspect(server, files["good"], preview=51).status_code == 422


def estimate(server, body: dict, **params) -> httpx.Response:
    return httpx.post(
        f"{server.url}/fine_tuning/jobs/estimate", headers=AUTH, json=body, params=params, timeout=120
    )


def test_estimate_predicts_memory_and_steps_of_the_job_as_it_would_be_created(server, files):
    r = estimate(
        server, {"model": "tiny", "training_file": files["good"], "hyperparameters": {"n_epochs": 2}}
    )
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["fits"] is True and e["peak_bytes"] > 0 and e["device"] == "cpu"
    # 25 records, the auto split holds out 5 (its minimum): 20 left, batch 8 (auto) -> 3 steps per epoch
    assert e["steps_per_epoch"] == 3 and e["total_steps"] == 6
    assert e["seconds_total"] > 0
    assert client(server).fine_tuning.jobs.list().data == []  # nothing was created


def test_estimate_refuses_what_the_job_would_fail_on_and_says_when_it_does_not_fit(
    server, files, monkeypatch
):
    r = estimate(server, {"model": "tiny", "training_file": files["bad"]})
    assert r.status_code == 400 and "line 2" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "training_file"
    r = estimate(server, {"model": "tiny", "training_file": "file-nope"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_file"

    import tuneforge.models.memory as memory

    monkeypatch.setattr(memory, "memory_available", lambda device: 1 << 20)  # a 1 MiB device
    e = estimate(server, {"model": "tiny", "training_file": files["good"]}, timing=False).json()
    assert e["fits"] is False and e["suggestions"] and e["seconds_total"] is None


def test_the_console_and_the_docs_are_served_from_the_package(server):
    page = httpx.get(server.root + "/")
    assert page.status_code == 200 and "/console/js/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/docs", "/redoc"):
        html = httpx.get(server.root + path).text
        assert (
            "/console/vendor/" in html and "cdn.jsdelivr.net" not in html and "fonts.googleapis" not in html
        )
    js = httpx.get(server.root + "/console/vendor/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert "cdn.redoc.ly" not in httpx.get(server.root + "/console/vendor/redoc.standalone.js").text


def test_a_job_with_a_test_split_has_a_before_after_report(server, files):
    from tuneforge.jobs.worker import Worker

    c = client(server)
    hp = {"test_split": 0.2, "max_steps": 4, "n_epochs": 1}
    job = c.fine_tuning.jobs.create(model="tiny", training_file=files["good"], hyperparameters=hp)
    plain = c.fine_tuning.jobs.create(
        model="tiny", training_file=files["good"], hyperparameters={"max_steps": 2}
    )
    r = httpx.get(f"{server.url}/fine_tuning/jobs/{job.id}/report", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "report_not_ready"
    assert Worker(server.app.state.settings).run(idle_exit=True) == 2
    done = c.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    r = httpx.get(f"{server.url}/fine_tuning/jobs/{job.id}/report", headers=AUTH)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (
        report["n_test"] == 5
        and report["tuned_model"] == done.fine_tuned_model
        and report["base_model"] == "tiny"
    )
    assert {v["key"] for v in report["variants"]} >= {"base", "tuned"}
    assert report["samples"] and all(s["where"].startswith("line ") for s in report["samples"])
    assert "forgetting" in report and "validation" in report
    text = json.dumps(report)
    assert str(server.app.state.settings.data_dir) not in text
    note = [e.message for e in c.fine_tuning.jobs.list_events(job.id) if e.message.startswith("Before/after")]
    assert note and "on 5 held-out test records: exact match (strict)" in note[0] and "(tuned)" in note[0]

    r = httpx.get(f"{server.url}/fine_tuning/jobs/{plain.id}/report", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_test_split"
    assert "test_split" in r.json()["error"]["message"]
    r = httpx.get(
        f"{server.url}/fine_tuning/jobs/{job.id}/report", headers={"Authorization": f"Bearer {BOB}"}
    )
    assert r.status_code == 404
