"""The feedback loop through the official client: stored completions (store / list / retrieve / update / delete /
messages), feedback (idempotent per user, bad values named), deployments (weights, stickiness per user, shadow,
promote, figures) and training files from feedback — and on every new route another tenant's ids are 404s."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import openai
import pytest

from tests.jobs.service_fixtures import BOB, client, live_server, service_settings, wait_for
from tests.serve.test_batching import make_adapter, register
from tuneforge.jobs import store

pytestmark = pytest.mark.timeout(300)
A, B, C = "ft:tiny:alice:v1", "ft:tiny:alice:v2", "ft:tiny:alice:v3"


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_base):
    tmp = tmp_path_factory.mktemp("loop")
    runs = {mid: make_adapter(tiny_base, tmp / f"r{i}", i + 1) for i, mid in enumerate((A, B, C))}
    settings = service_settings(
        tmp / "data", tiny_base, max_concurrent_generations=4, max_queued_generations=16
    )
    settings.ensure_dirs()
    store.init_db(store.engine_for(settings))
    register(settings, runs)
    with live_server(settings) as server:
        yield server


def ask(server, model: str, question: str = "Capital of Peru?", key=None, **kw):
    c = client(server, key) if key else client(server)
    return c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=3, temperature=0, **kw
    )


def post(server, path: str, body: dict, key=None) -> dict:
    c = client(server, key) if key else client(server)
    return c.post(path, cast_to=httpx.Response, body=body).json()


def get(server, path: str, key=None) -> dict:
    c = client(server, key) if key else client(server)
    return c.get(path, cast_to=httpx.Response).json()


def status_of(fn) -> tuple[int, dict]:
    try:
        fn()
    except openai.APIStatusError as e:
        return e.status_code, e.response.json()
    return 200, {}


# ---------------------------------------------------------------------------------- stored completions
def test_store_list_retrieve_update_delete(srv):
    c = client(srv)
    kept = ask(srv, "tiny", "Keep me", store=True, metadata={"topic": "billing", "ticket": "7"})
    ask(srv, "tiny", "Do not keep me")  # store defaults to false: nothing is kept
    other = ask(srv, A, "Keep me too", store=True, metadata={"topic": "login"})
    assert kept.metadata == {"topic": "billing", "ticket": "7"}

    ids = [x.id for x in c.chat.completions.list()]
    assert kept.id in ids and other.id in ids and len(ids) == 2
    assert [x.id for x in c.chat.completions.list(metadata={"topic": "billing"})] == [kept.id]
    assert [x.id for x in c.chat.completions.list(model=A)] == [other.id]

    got = c.chat.completions.retrieve(kept.id)
    assert got.choices[0].message.content == kept.choices[0].message.content
    assert got.usage.completion_tokens == kept.usage.completion_tokens
    msgs = c.chat.completions.messages.list(kept.id)
    assert [(m.role, m.content) for m in msgs] == [("user", "Keep me")]

    assert c.chat.completions.update(kept.id, metadata={"topic": "refund"}).metadata == {"topic": "refund"}

    post(srv, f"/chat/completions/{kept.id}/feedback", {"user": "u1", "thumbs": "up"})
    assert c.chat.completions.delete(kept.id).deleted
    assert status_of(lambda: c.chat.completions.retrieve(kept.id))[0] == 404
    assert status_of(lambda: get(srv, f"/chat/completions/{kept.id}/feedback"))[0] == 404
    from sqlalchemy import select

    from tuneforge.jobs.feedback import Feedback

    sessions = store.session_factory(srv.app.state.db)
    with sessions() as s:  # deletion deletes: the feedback rows are gone too
        assert not list(s.scalars(select(Feedback).where(Feedback.completion_id == kept.id)))


def test_streamed_answer_is_stored_whole(srv):
    c = client(srv)
    pieces = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Stream me"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        store=True,
    )
    chunks = list(pieces)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    got = c.chat.completions.retrieve(chunks[0].id)
    assert got.choices[0].message.content == text
    assert got.choices[0].finish_reason in ("stop", "length")


# ------------------------------------------------------------------------------------------ feedback
def test_feedback_is_per_user_and_replaced(srv):
    cid = ask(srv, "tiny", "Rate me", store=True).id
    first = post(srv, f"/chat/completions/{cid}/feedback", {"user": "u1", "thumbs": "down", "score": 2})
    assert first["thumbs"] == "down" and first["score"] == 2
    post(srv, f"/chat/completions/{cid}/feedback", {"user": "u1", "thumbs": "up", "comment": "on reflection"})
    post(srv, f"/chat/completions/{cid}/feedback", {"user": "u2", "correction": "Lima."})
    rows = {f["user"]: f for f in get(srv, f"/chat/completions/{cid}/feedback")["data"]}
    assert set(rows) == {"u1", "u2"}
    assert rows["u1"]["thumbs"] == "up" and rows["u1"]["score"] is None  # replaced whole, not merged
    assert rows["u2"]["correction"] == "Lima."


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"score": 6}, "score"),
        ({"score": True}, "score"),
        ({"thumbs": "sideways"}, "thumbs"),
        ({"correction": "x" * 32_001}, "correction"),
        ({"user": "u"}, None),  # nothing to say
        ({"thumbs": "up", "stars": 5}, "stars"),
    ],
)
def test_bad_feedback_names_the_field(srv, body, field):
    cid = ask(srv, "tiny", "Rate me badly", store=True).id
    code, err = status_of(lambda: post(srv, f"/chat/completions/{cid}/feedback", body))
    assert code == (422 if field else 400), err
    if field:
        assert field in err["error"]["param"], err
    else:
        assert "at least one of" in err["error"]["message"]


def test_feedback_on_an_unknown_completion_is_404(srv):
    code, err = status_of(lambda: post(srv, "/chat/completions/chatcmpl-nope/feedback", {"thumbs": "up"}))
    assert code == 404 and err["error"]["param"] == "completion_id"


# --------------------------------------------------------------------------------------- deployments
def test_deployment_splits_by_weight_sticky_per_user(srv):
    dep = post(
        srv, "/deployments", {"name": "split", "arms": [{"model": A, "weight": 1}, {"model": B, "weight": 1}]}
    )
    assert [a["model"] for a in dep["arms"]] == [A, B]
    seen: dict[str, set[str]] = {}
    for user in [f"user-{i}" for i in range(24)]:
        for _ in range(2):
            seen.setdefault(user, set()).add(ask(srv, "split", user=user).model)
    assert all(len(models) == 1 for models in seen.values())  # sticky: one person sees one version
    per_arm = Counter(next(iter(m)) for m in seen.values())
    assert per_arm[A] >= 4 and per_arm[B] >= 4, per_arm  # 24 users at 50/50 reach both arms

    post(srv, "/deployments/split", {"arms": [{"model": A, "weight": 1}, {"model": B, "weight": 0}]})
    assert {ask(srv, "split", user=u).model for u in seen} == {A}
    promoted = post(srv, "/deployments/split/promote", {"model": B})
    assert promoted["arms"] == [{"model": B, "weight": 1.0}]
    assert [h["why"] for h in promoted["history"]] == ["created", "changed", "promoted " + B]
    assert ask(srv, "split", user="user-0").model == B

    stats = get(srv, "/deployments/split/stats")
    counts = {a["model"]: a["requests"] for a in stats["arms"]}
    assert counts[A] + counts[B] == 48 + 24 + 1
    assert counts[A] == per_arm[A] * 2 + 24


def test_shadow_answers_are_stored_not_sent(srv):
    post(srv, "/deployments", {"name": "shadowed", "arms": [{"model": A}], "shadow": C})
    out = ask(srv, "shadowed", "Shadow me", user="s1")
    assert out.model == A
    c = client(srv)
    wait_for(
        lambda: any(x.shadow_of == out.id for x in c.chat.completions.list(model="shadowed")),
        30,
        "the shadow answer",
    )
    stored = {x.id: x for x in c.chat.completions.list(model="shadowed")}
    assert stored[out.id].model == A  # a shadowed deployment stores the primary answer too
    shadow = next(x for x in stored.values() if x.shadow_of == out.id)
    assert shadow.model == C and shadow.deployment == "shadowed"
    arms = {(a["model"], a["shadow"]): a for a in get(srv, "/deployments/shadowed/stats")["arms"]}
    assert arms[(A, False)]["requests"] == 1 and arms[(C, True)]["requests"] == 1


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"name": "bad name!", "arms": [{"model": A}]}, "name", 422),
        ({"name": "x", "arms": []}, "arms", 422),
        ({"name": "x", "arms": [{"model": "ft:tiny:bob:nope"}]}, "arms.0.model", 400),
        ({"name": "x", "arms": [{"model": A, "weight": -1}]}, "weight", 422),
        ({"name": "x", "arms": [{"model": A, "weight": 0}]}, "arms", 400),
        ({"name": "x", "arms": [{"model": A}, {"model": A}]}, "arms", 400),
        ({"name": "tiny", "arms": [{"model": A}]}, "name", 400),
        ({"name": "x", "arms": [{"model": A}], "shadow": "nope"}, "shadow", 400),
    ],
)
def test_bad_deployments_name_the_field(srv, body, param, code):
    got, err = status_of(lambda: post(srv, "/deployments", body))
    assert got == code, err
    assert param in (err["error"]["param"] or ""), err


def test_tenants_see_only_their_own(srv):
    cid = ask(srv, "tiny", "Alice's secret", store=True).id
    post(srv, "/deployments", {"name": "alice-only", "arms": [{"model": A}]})
    bob = client(srv, BOB)
    for call in (
        lambda: bob.chat.completions.retrieve(cid),
        lambda: bob.chat.completions.delete(cid),
        lambda: bob.chat.completions.update(cid, metadata={"a": "b"}),
        lambda: bob.chat.completions.messages.list(cid),
        lambda: post(srv, f"/chat/completions/{cid}/feedback", {"thumbs": "down"}, key=BOB),
        lambda: get(srv, f"/chat/completions/{cid}/feedback", key=BOB),
        lambda: get(srv, "/deployments/alice-only", key=BOB),
        lambda: get(srv, "/deployments/alice-only/stats", key=BOB),
        lambda: post(srv, "/deployments/alice-only", {"store": True}, key=BOB),
        lambda: post(srv, "/deployments/alice-only/promote", {"model": A}, key=BOB),
        lambda: ask(srv, "alice-only", key=BOB),
    ):
        assert status_of(call)[0] == 404
    assert cid not in [x.id for x in bob.chat.completions.list()]
    assert get(srv, "/deployments", key=BOB)["data"] == []
    # nor can bob put alice's model behind a deployment of his
    code, err = status_of(
        lambda: post(srv, "/deployments", {"name": "theft", "arms": [{"model": A}]}, key=BOB)
    )
    assert code == 400 and err["error"]["param"] == "arms.0.model"


# --------------------------------------------------------------------------------- datasets from feedback
def test_datasets_from_feedback(srv, tmp_path):
    post(srv, "/deployments", {"name": "rated", "arms": [{"model": A}, {"model": B}], "store": True})
    answers = {}
    for u in range(12):
        out = ask(srv, "rated", "Same question", user=f"r{u}")
        answers[out.id] = out
    for cid, out in answers.items():
        post(
            srv,
            f"/chat/completions/{cid}/feedback",
            {"user": "judge", "thumbs": "up" if out.model == A else "down"},
        )
    one = next(iter(answers))
    post(srv, f"/chat/completions/{one}/feedback", {"user": "editor", "correction": "The right answer."})

    got = post(srv, "/feedback/datasets", {"deployment": "rated"})
    counts = got["counts"]
    assert counts["kto"] == len({(o.model, o.choices[0].message.content) for o in answers.values()})
    assert counts["skipped"].get("kto: duplicate row", 0) == 12 - counts["kto"]
    c = client(srv)
    assert {o.model for o in answers.values()} == {A, B}  # the users' fixed buckets reach both arms
    kto = [json.loads(line) for line in c.files.content(got["files"]["kto"]).text.splitlines()]
    assert sorted(r["label"] for r in kto) == [False, True]
    assert counts["used"]["dpo: A/B: arms rated apart"] == 1
    dpo = [json.loads(line) for line in c.files.content(got["files"]["dpo"]).text.splitlines()]
    assert any(r["preferred_output"][0]["content"] == "The right answer." for r in dpo)
    assert c.files.retrieve(got["files"]["sft"]).purpose == "fine-tune"
    cli_does_what_the_api_does(srv, tmp_path)


def cli_does_what_the_api_does(srv, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    data = str(srv.app.state.settings.data_dir)
    run = CliRunner().invoke(
        app,
        [
            "feedback",
            "export",
            "--tenant",
            "alice",
            "--deployment",
            "rated",
            "--out",
            str(tmp_path),
            "--data-dir",
            data,
        ],
    )
    assert run.exit_code == 0, run.output
    api_counts = post(srv, "/feedback/datasets", {"deployment": "rated"})["counts"]
    assert f"kto: {api_counts['kto']} rows" in run.output
    assert len((tmp_path / "kto.jsonl").read_text().splitlines()) == api_counts["kto"]
    run = CliRunner().invoke(
        app, ["feedback", "stats", "rated", "--tenant", "alice", "--json", "--data-dir", data]
    )
    assert run.exit_code == 0, run.output
    assert json.loads(run.output) | {"object": "deployment.stats"} == get(srv, "/deployments/rated/stats")
    run = CliRunner().invoke(app, ["feedback", "stats", "nope", "--tenant", "alice", "--data-dir", data])
    assert run.exit_code != 0
