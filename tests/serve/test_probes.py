"""Probes of the whole API, as a careless user and an attacker would send requests: schemathesis generates them from
the service's own OpenAPI document (bounded examples per operation), and hypothesis writes upload files and job
bodies of every shape. The one rule: no request is answered with a server error."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.jobs.service_fixtures import ALICE, live_server, service_settings

# Generation routes answer with the tiny model in milliseconds, but every example is a full request: a bound per
# operation keeps the probe to about a minute.
EXAMPLES = 20
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
AUTH = {"Authorization": f"Bearer {ALICE}"}


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_base):
    cfg = service_settings(tmp_path_factory.mktemp("probe"), tiny_base, max_upload_bytes=200_000)
    with live_server(cfg) as srv:
        yield srv


def run_operation(op, root: str, seen: dict[int, int], errors: list[str]) -> None:
    @given(case=op.as_strategy())
    @SETTINGS
    def probe(case):
        r = case.call(base_url=root, headers=AUTH, timeout=60)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            errors.append(f"{case.method} {case.formatted_path}: {r.status_code} {r.text[:200]}")

    probe()


def test_no_generated_request_gets_a_server_error(probed):
    """Every operation of the OpenAPI document, EXAMPLES generated requests each (bodies, parameters, headers as the
    schema allows and beyond it); the tally of answers per operation is printed for the note."""
    schema = schemathesis.openapi.from_url(f"{probed.root}/openapi.json")
    tally: dict[str, dict[int, int]] = {}
    errors: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        run_operation(op, probed.root, tally.setdefault(f"{op.method.upper()} {op.path}", {}), errors)
    print("\n".join(f"{k}: {dict(sorted(v.items()))}" for k, v in sorted(tally.items())))
    assert len(tally) >= 15 and sum(sum(v.values()) for v in tally.values()) >= 10 * len(tally)
    assert not errors, errors[:5]


# --------------------------------------------------------------------------------------------- hypothesis
line = st.one_of(
    st.binary(max_size=200),  # anything, including invalid UTF-8
    st.text(max_size=200).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    ).map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.builds(
        lambda u, a: json.dumps(
            {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
        ).encode(),
        st.text(max_size=60),
        st.text(max_size=60),
    ),
)


@given(
    lines=st.lists(line, max_size=12),
    name=st.text(min_size=1, max_size=80),
    purpose=st.sampled_from(["fine-tune", "x"]),
)
@SETTINGS
def test_any_upload_is_stored_or_refused_with_a_client_error(probed, lines, name, purpose):
    body = b"\n".join(lines)
    with httpx.Client(base_url=probed.url, headers=AUTH, timeout=60) as http:
        r = http.post("/files", data={"purpose": purpose}, files={"file": (name, body)})
        assert r.status_code < 500, r.text[:300]
        if r.status_code == 200:  # what was accepted is there, and can be deleted
            file_id = r.json()["id"]
            assert http.get(f"/files/{file_id}").status_code == 200
            assert http.delete(f"/files/{file_id}").status_code == 200


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=3),
    max_leaves=10,
)
job_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny", "nope", ""]) | st.text(max_size=20),
        "training_file": st.text(max_size=30),
        "suffix": json_value,
        "seed": json_value,
        "hyperparameters": st.dictionaries(
            st.sampled_from(
                ["n_epochs", "batch_size", "learning_rate_multiplier", "lora_rank", "lora_alpha"]
            ),
            json_value,
            max_size=4,
        ),
        "method": json_value,
        "metadata": json_value,
    },
)


@given(body=st.one_of(job_body, json_value))
@SETTINGS
def test_any_job_body_gets_a_client_error_not_a_server_error(probed, body):
    with httpx.Client(base_url=probed.url, headers=AUTH, timeout=60) as http:
        r = http.post(
            "/fine_tuning/jobs",
            content=json.dumps(body, allow_nan=True),
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code < 500, r.text[:300]
