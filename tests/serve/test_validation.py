"""Hostile and careless request bodies (issue 15): each is refused with a 4xx in OpenAI's shape whose message states
the rule, before anything reaches the database, the tokenizer or torch; and the health and OpenAPI answers tell
what they should and nothing more. Raw HTTP where the official client would not send the body."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import capitals_records, write_jsonl
from tests.jobs.service_fixtures import ALICE, BOB, client, live_server, service_settings
from tuneforge.jobs import store

AUTH = {"Authorization": f"Bearer {ALICE}"}
JSON = {**AUTH, "Content-Type": "application/json"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    settings = service_settings(tmp_path_factory.mktemp("svc"), tiny_model_dir, max_n=4)
    with live_server(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def train_file(server, tmp_path_factory) -> str:
    path = write_jsonl(tmp_path_factory.mktemp("d") / "train.jsonl", capitals_records(20))
    return client(server).files.create(file=path, purpose="fine-tune").id


def _post(server, path: str, raw: str) -> httpx.Response:
    """A body sent as written: 1e309, 18446744073709551616 and NaN are JSON no client library would produce."""
    return httpx.post(f"{server.url}{path}", headers=JSON, content=raw.encode(), timeout=60)


def _error(r: httpx.Response, status: int = 422) -> dict:
    body = r.json()
    assert r.status_code == status, (r.status_code, body)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _job(train_file: str, hyperparameters: str = "{}", **fields: str) -> str:
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return (
        f'{{"model": "tiny", "training_file": "{train_file}", "hyperparameters": {hyperparameters}{extra}}}'
    )


def _chat(**fields: str) -> str:
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2{extra}}}'


# ---------------------------------------------------------------------------------------------- item 4: seed
def test_a_seed_beyond_64_bits_is_a_422_before_anything_streams(server, train_file):
    for seed in ("18446744073709551616", "1e30", "-9223372036854775809"):
        err = _error(_post(server, "/chat/completions", _chat(seed=seed)))
        assert err["param"] == "seed" and "9,223,372,036,854,775,807" in err["message"], err
        with httpx.stream(
            "POST", f"{server.url}/chat/completions", headers=JSON, content=_chat(seed=seed, stream="true")
        ) as r:  # refused with a status, not a 200 whose stream then carries an error event
            assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
        err = _error(_post(server, "/completions", f'{{"model": "tiny", "prompt": "x", "seed": {seed}}}'))
        assert err["param"] == "seed"
        err = _error(_post(server, "/fine_tuning/jobs", _job(train_file, seed=seed)))
        assert err["param"] == "seed" and "0 to 2,147,483,647" in err["message"]
    with httpx.Client(headers=JSON, timeout=60) as h:  # a keep-alive connection survives the refusal
        bad = _chat(seed="18446744073709551616")
        first, second = (h.post(f"{server.url}/chat/completions", content=bad) for _ in range(2))
        assert first.status_code == second.status_code == 422
        assert first.headers.get("connection") != "close" and _local_addr(first) == _local_addr(second)
    c = client(server)
    for seed in (2**63 - 1, -(2**63), 0):  # the bounds themselves are accepted and sample
        out = c.chat.completions.create(model="tiny", messages=HI, max_tokens=2, seed=seed, temperature=1)
        assert out.usage.completion_tokens >= 1


def _local_addr(r: httpx.Response):
    return r.extensions["network_stream"].get_extra_info("client_addr")


# ------------------------------------------------------------------------------------ item 6: finite numbers
@pytest.mark.parametrize("name", ["lora_alpha", "weight_decay", "learning_rate_multiplier", "lora_dropout"])
@pytest.mark.parametrize("raw", ["1e309", "-1e309", "Infinity", "NaN"])
def test_infinite_or_nan_hyperparameters_are_refused(server, train_file, name, raw):
    err = _error(_post(server, "/fine_tuning/jobs", _job(train_file, f'{{"{name}": {raw}}}')))
    assert err["param"] == f"hyperparameters.{name}" and err["code"] == "invalid_value"
    assert "must be" in err["message"] and "number" in err["message"], err
    method = f'{{"type": "supervised", "supervised": {{"hyperparameters": {{"{name}": {raw}}}}}}}'
    err = _error(_post(server, "/fine_tuning/jobs", _job(train_file, method=method)))
    assert err["param"] == f"method.supervised.hyperparameters.{name}"


def test_infinite_sampling_values_are_refused(server):
    for name in ("temperature", "top_p"):
        err = _error(_post(server, "/chat/completions", _chat(**{name: "1e309"})))
        assert err["param"] == name and "not Infinity" in err["message"]


def test_values_at_the_bounds_are_accepted_and_one_past_them_refused(server, train_file):
    c = client(server)
    at = {"lora_alpha": 4096, "weight_decay": 1, "max_steps": 1_000_000, "max_length": 131_072}
    job = c.fine_tuning.jobs.create(
        model="tiny", training_file=train_file, hyperparameters={**at, "learning_rate_multiplier": 100}
    )
    assert job.model_extra["hyperparameter_extensions"] == {**at, "validation_split": "auto"}  # as sent
    c.fine_tuning.jobs.cancel(job.id)
    for name, value in at.items():
        past = value + 1 if isinstance(value, int) and name != "weight_decay" else value + 0.01
        with pytest.raises(openai.UnprocessableEntityError) as e:
            c.fine_tuning.jobs.create(model="tiny", training_file=train_file, hyperparameters={name: past})
        assert e.value.body["param"] == f"hyperparameters.{name}" and f"{value:,}" in e.value.message


# ------------------------------------------------------------------------------------- item 8: upper bounds
@pytest.mark.parametrize(
    ("hyperparameters", "param", "rule"),
    [
        ('{"max_steps": 1e30}', "max_steps", "from 1 to 1,000,000"),
        ('{"max_steps": 1000001}', "max_steps", "from 1 to 1,000,000"),
        ('{"max_length": 1000000000000}', "max_length", "from 8 to 131,072"),
        ('{"eval_every": 1e20}', "eval_every", "from 1 to 1,000,000"),
        ('{"save_every": 100000000000000000000}', "save_every", "from 1 to 1,000,000"),
        ('{"lora_alpha": 1e6}', "lora_alpha", "at most 4,096"),
        ('{"weight_decay": 2}', "weight_decay", "from 0 to 1"),
        (
            '{"lora_target_modules": [' + ", ".join(['"' + "q" * 1000 + '"'] * 64) + "]}",
            "lora_target_modules",
            "256",
        ),
        ('{"lora_target_modules": [' + ", ".join(['"q_proj"'] * 65) + "]}", "lora_target_modules", "1 to 64"),
        ('{"lora_target_modules": []}', "lora_target_modules", "1 to 64"),
    ],
)
def test_hyperparameters_have_upper_bounds_stated_in_the_error(
    server, train_file, hyperparameters, param, rule
):
    err = _error(_post(server, "/fine_tuning/jobs", _job(train_file, hyperparameters)))
    assert err["param"] == f"hyperparameters.{param}" and rule in err["message"], err


def test_metadata_has_openais_limits(server, train_file):
    too_many = {f"k{i}": "v" for i in range(17)}
    for metadata, words in [
        (too_many, "at most 16"),
        ({"k" * 65: "v"}, "at most 64 characters"),
        ({"k": "v" * 513}, "at most 512 characters"),
        ({"k": "v" * 500_000}, "at most 512 characters"),  # (under the 1 MiB JSON limit, which answers 413)
        ({"k": 5}, "strings"),
    ]:
        r = httpx.post(
            f"{server.url}/fine_tuning/jobs",
            headers=AUTH,
            json={"model": "tiny", "training_file": train_file, "metadata": metadata},
            timeout=60,
        )
        err = _error(r)
        assert err["param"] == "metadata" and words in err["message"] and len(err["message"]) < 300, err
    c = client(server)
    biggest = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}  # exactly at the limits: accepted
    job = c.fine_tuning.jobs.create(model="tiny", training_file=train_file, metadata=biggest)
    assert job.metadata == biggest
    c.fine_tuning.jobs.cancel(job.id)


def test_the_bounds_are_in_the_openapi_descriptions(server):
    schemas = httpx.get(f"{server.root}/openapi.json").json()["components"]["schemas"]
    hp = schemas["HyperparametersIn"]["properties"]
    assert "1,000,000" in hp["max_steps"]["description"] and "131,072" in hp["max_length"]["description"]
    assert "64" in hp["lora_target_modules"]["description"] and "4,096" in hp["lora_alpha"]["description"]
    meta = schemas["JobCreate"]["properties"]["metadata"]
    assert "16" in meta["description"] and "512" in meta["description"]
    assert "64-bit" in schemas["ChatCompletionRequest"]["properties"]["seed"]["description"]


# ------------------------------------------------------------------------ item 9: messages that state the rule
def test_an_out_of_range_n_epochs_says_the_rule_not_the_union(server, train_file):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client(server).fine_tuning.jobs.create(
            model="tiny", training_file=train_file, hyperparameters={"n_epochs": -1}
        )
    assert e.value.body["param"] == "hyperparameters.n_epochs"
    assert 'must be "auto" or a whole number from 1 to 50, not -1' in e.value.message
    assert "more problem" not in e.value.message and "literal" not in e.value.message


@pytest.mark.parametrize(
    ("raw", "kind"), [("[1, 2]", "a JSON array"), ('"hi"', "a JSON string"), ("3", "number")]
)
def test_a_body_that_is_not_an_object_says_so(server, raw, kind):
    for path in ("/fine_tuning/jobs", "/chat/completions"):
        err = _error(_post(server, path, raw), 400)
        assert (
            "must be a JSON object" in err["message"]
            and kind in err["message"]
            and "None" not in err["message"]
        )


@pytest.mark.parametrize(
    ("hyperparameters", "param"),
    [
        ('{"n_epochs": true}', "n_epochs"),
        ('{"n_epochs": 2.5}', "n_epochs"),
        ('{"batch_size": "8"}', "batch_size"),
        ('{"learning_rate_multiplier": "1e-3"}', "learning_rate_multiplier"),
        ('{"lora_rank": false}', "lora_rank"),
    ],
)
def test_a_boolean_or_a_numeric_string_is_not_a_number(server, train_file, hyperparameters, param):
    err = _error(_post(server, "/fine_tuning/jobs", _job(train_file, hyperparameters)))
    assert err["param"] == f"hyperparameters.{param}" and "must be" in err["message"], err


def test_strict_sampling_fields(server):
    for name, raw in [("n", "true"), ("temperature", '"0.5"'), ("max_tokens", '"2"'), ("stream", '"yes"')]:
        body = (
            _chat(**{name: raw}).replace('"max_tokens": 2, ', "")
            if name == "max_tokens"
            else _chat(**{name: raw})
        )
        assert _error(_post(server, "/chat/completions", body))["param"] == name


def test_chat_messages_are_checked_like_openai_checks_them(server):
    def messages(*ms: str) -> str:
        return '{"model": "tiny", "messages": [' + ", ".join(ms) + "]}"

    err = _error(_post(server, "/chat/completions", messages('{"role": "tool", "content": "42"}')))
    assert err["param"] == "messages.0.tool_call_id" and "tool_call_id" in err["message"]
    err = _error(_post(server, "/chat/completions", messages('{"role": "user", "content": []}')))
    assert err["param"] == "messages.0.content" and "non-empty list" in err["message"]
    err = _error(
        _post(server, "/chat/completions", messages('{"role": "user", "content": "a"}', '{"role": "user"}'))
    )
    assert err["param"] == "messages.1.content" and "needs content" in err["message"]
    bad_part = '{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}'
    err = _error(_post(server, "/chat/completions", messages(bad_part)))
    assert err["param"] == "messages.0.content.0.type" and "'text'" in err["message"]
    # a list of text parts is still fine
    ok = _post(
        server,
        "/chat/completions",
        _chat().replace('"content": "hi"', '"content": [{"type": "text", "text": "hi"}]'),
    )
    assert ok.status_code == 200, ok.text


# --------------------------------------------------------------------------------------- OpenAPI document
def test_the_openapi_document_declares_errors_enums_and_405s_list_every_method(server):
    doc = httpx.get(f"{server.root}/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status in ("400", "401", "404", "409", "413", "422", "429"):
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (path, method, status)
    assert "Retry-After" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]["429"]["headers"]
    error = doc["components"]["schemas"]["ErrorDetail"]["properties"]
    assert set(error) == {"message", "type", "param", "code"}
    training_type = doc["components"]["schemas"]["JobCreate"]["properties"]["training_type"]
    assert {"lora", "full", "dora"} <= set(training_type["enum"])

    for method, path, allow in [
        ("DELETE", "/v1/files", "GET, POST"),
        ("OPTIONS", "/v1/files", "GET, POST"),
        ("PUT", "/v1/files/file-x", "GET, DELETE"),
        ("PUT", "/v1/models/tiny", "GET, DELETE"),
        ("POST", "/health", "GET"),
    ]:
        r = httpx.request(method, f"{server.root}{path}", headers=AUTH)
        err = _error(r, 405)
        assert r.headers["allow"] == allow and allow in err["message"], (method, path, r.headers)
        declared = {
            m.upper() for m in doc["paths"][path.replace("file-x", "{file_id}").replace("tiny", "{model}")]
        }
        assert declared == set(allow.split(", "))  # the Allow header lists what the document declares


# ------------------------------------------------------------------------------------------------- /health
def test_liveness_needs_no_key_and_tells_nothing_readiness_is_per_tenant(server, train_file, monkeypatch):
    for path in ("/health", "/health/live"):
        r = httpx.get(f"{server.root}{path}")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(f"{server.root}/health/ready")
    assert _error(r, 401)["code"] == "missing_api_key"

    c = client(server)
    job = c.fine_tuning.jobs.create(
        model="tiny", training_file=train_file
    )  # validating_files: no worker here
    mine = f"ft:tiny:alice::{job.id.removeprefix('ftjob-')}"
    theirs = "ft:tiny:bob::someoneelse"
    with store.transaction(server.app.state.sessions) as s:
        for model_id, owner in ((mine, "alice"), (theirs, "bob"), (theirs + "-full", "bob")):
            s.add(
                store.FineTunedModel(
                    id=model_id,
                    owner=owner,
                    base="tiny",
                    job_id=job.id,
                    run_dir="/nowhere",
                    training_type="lora",
                    created_at=int(time.time()),
                )
            )
    loaded = {"base:tiny": sorted([mine, theirs]), f"full:{theirs}-full": []}
    monkeypatch.setattr(server.app.state.engine, "loaded", lambda: loaded)

    def ready(key: str) -> dict:
        r = httpx.get(f"{server.root}/health/ready", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r.json()

    alice, bob = ready(ALICE), ready(BOB)
    assert alice["status"] == "ok" and alice["database"] == "ok" and alice["queued_jobs"] >= 1
    assert bob["queued_jobs"] == 0 and bob["running_jobs"] == 0  # alice's jobs are not counted for bob
    assert alice["models_loaded"] == {"base:tiny": [mine]}
    assert bob["models_loaded"] == {"base:tiny": [theirs], f"full:{theirs}-full": []}
    c.fine_tuning.jobs.cancel(job.id)
