"""The console in a real browser (headless Chromium): sign in, upload the ticket file, see its preview and
counts, estimate and start a job, watch the loss chart fill while it runs, pause / reload / resume, the job
succeeds, the playground streams the tuned model's answer beside the base's; a bad file shows its line-numbered
problem; another tenant's key sees none of it. Screenshots of each page go to the `shots` folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import NARROW, new_tab, sign_in
from tests.conftest import REPO
from tests.jobs.service_fixtures import BOB

TICKETS = REPO / "examples" / "data" / "tickets.jsonl"
N_TICKETS = 64


@pytest.fixture(scope="module")
def tickets(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "tickets.jsonl"
    path.write_text("".join(TICKETS.read_text().splitlines(keepends=True)[:N_TICKETS]))
    return path


def points(page, chart: str, series: str) -> int:
    """How many points a chart's series has, from the chart's accessible description."""
    label = page.locator(chart).get_attribute("aria-label") or ""
    m = re.search(rf"{series} (\d+) points", label)
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module")
def flow(browser, console, tickets, shots) -> dict:
    """The whole first-time journey, once; the tests below check its parts. Returns the ids it made."""
    t = new_tab(browser, console)
    page = t.page
    out: dict = {}
    try:
        page.goto(console.root + "/")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("API key").fill("sk-not-a-key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("Incorrect API key")
        page.screenshot(path=shots / "sign-in.png")
        page.get_by_label("API key").fill("sk-test-alice-0001")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Datasets")).to_be_visible()

        # upload → the file's report: counts, preview as chat turns, token lengths
        page.set_input_files("#upload-file", str(tickets))
        expect(page).to_have_url(re.compile(r"#/datasets/file-"), timeout=30_000)
        out["file"] = page.url.rsplit("/", 1)[1]
        expect(page.locator("#summary")).to_contain_text("chat")
        out["summary"] = {
            name: page.locator(f"#summary dt:text-is('{name}') + dd").inner_text()
            for name in ("format", "rows read", "examples", "unusable rows")
        }
        expect(page.locator("#preview .turn.assistant").first).to_contain_text('"queue"')
        expect(page.get_by_text("No problems found")).to_be_visible()
        expect(page.get_by_role("heading", name=re.compile(r"Lengths \(tokens of tiny\)"))).to_be_visible()
        page.screenshot(path=shots / "dataset.png", full_page=True)

        # the new-job form: estimate first, then start
        page.get_by_role("link", name="Fine-tune on this file").click()
        expect(page.get_by_role("heading", name="New fine-tuning job")).to_be_visible()
        expect(page.get_by_label("Training file", exact=True)).to_have_value(out["file"])
        page.get_by_label("Max steps").fill("400")
        page.get_by_label("Learning rate multiplier").fill("0.5")
        page.get_by_label("Suffix").fill("tickets-v1")
        page.get_by_label("Test share (before/after report)").fill("0.2")
        page.get_by_role("button", name="Estimate memory and time").click()
        expect(page.locator("#estimate")).to_contain_text("Peak memory", timeout=60_000)
        out["estimate"] = page.locator("#estimate").inner_text()
        page.screenshot(path=shots / "new-job.png", full_page=True)
        page.get_by_role("button", name="Start job").click()
        expect(page).to_have_url(re.compile(r"#/jobs/ftjob-"))
        out["job"] = page.url.rsplit("/", 1)[1]

        # live: the loss chart gets points while the job runs; pause, reload (same state), resume
        page.wait_for_function(
            """() => /train loss ([2-9]|\\d\\d+) points/.test(
                 document.querySelector('#loss-chart')?.getAttribute('aria-label') || '')""",
            timeout=120_000,
        )
        out["running_points"] = points(page, "#loss-chart", "train loss")
        out["status_while_points"] = page.locator(".badge").first.inner_text()
        page.get_by_role("button", name="Pause").click()
        expect(page.locator("h1 + .badge")).to_have_text("paused", timeout=60_000)
        before = points(page, "#loss-chart", "train loss")
        page.reload()
        expect(page.locator("h1 + .badge")).to_have_text("paused")
        page.wait_for_function(
            f"""() => /train loss {before} points/.test(
                 document.querySelector('#loss-chart')?.getAttribute('aria-label') || '')"""
        )
        out["points_after_reload"] = points(page, "#loss-chart", "train loss")
        out["paused_points"] = before
        page.screenshot(path=shots / "job-paused.png", full_page=True)
        page.get_by_role("button", name="Resume").click()
        expect(page.locator("h1 + .badge")).to_have_text("succeeded", timeout=240_000)
        out["final_points"] = points(page, "#loss-chart", "train loss")
        out["validation_points"] = points(page, "#loss-chart", "validation loss")
        out["model"] = page.locator("#tuned-model code").inner_text()
        expect(page.locator("#report")).to_contain_text("Sample answers")
        out["report"] = page.locator("#report").inner_text()
        page.screenshot(path=shots / "job.png", full_page=True)

        # the playground: base and tuned answer the same prompt, each streamed
        page.get_by_role("link", name="Compare in the playground").click()
        expect(page.get_by_label("Model B", exact=True)).to_have_value(out["model"])
        page.evaluate(
            """() => { window.__pieces = 0; new MutationObserver(() => window.__pieces++)
                 .observe(document.querySelector('#answer-b'), {childList: true, characterData: true, subtree: true}); }"""
        )
        ticket = json.loads(tickets.read_text().splitlines()[0])["messages"]
        page.get_by_label("System prompt").fill(ticket[0]["content"])
        page.get_by_label("Prompt", exact=True).fill(ticket[1]["content"])
        page.get_by_label("Max tokens").fill("24")
        page.get_by_role("button", name="Send to both").click()
        expect(page.locator("#usage-b")).to_contain_text("tokens", timeout=60_000)
        expect(page.locator("#usage-a")).to_contain_text("tokens", timeout=60_000)
        out["answer_b"] = page.locator("#answer-b").inner_text()
        out["pieces_b"] = page.evaluate("window.__pieces")
        page.screenshot(path=shots / "playground.png", full_page=True)

        page.get_by_role("link", name="Models", exact=True).click()
        expect(page.locator("#snippet")).to_contain_text(f'base_url="{console.root}/v1"')
        out["models_text"] = page.locator("main").inner_text()
        page.screenshot(path=shots / "models.png", full_page=True)
        page.get_by_role("link", name="Jobs", exact=True).click()
        expect(page.get_by_role("link", name=out["job"])).to_be_visible()
        page.screenshot(path=shots / "jobs.png")
    finally:
        t.context.close()
    t.check()
    return out


def test_upload_shows_counts_preview_and_token_lengths(flow):
    assert flow["summary"] == {
        "format": "chat",
        "rows read": str(N_TICKETS),
        "examples": str(N_TICKETS),
        "unusable rows": "0",
    }


def test_estimate_before_the_job(flow):
    assert "Peak memory" in flow["estimate"] and "steps" in flow["estimate"]


def test_loss_chart_fills_while_running_and_survives_a_reload(flow):
    assert flow["running_points"] >= 2 and flow["status_while_points"] in ("running", "queued")
    assert flow["points_after_reload"] == flow["paused_points"]  # the state is the server's, not the page's
    assert flow["final_points"] > flow["paused_points"]
    assert flow["validation_points"] >= 1


def test_the_job_page_shows_the_before_after_report(flow):
    report = flow["report"]
    assert "13 held-out test records" in report  # 20% of 64
    for part in ("Before and after", "exact match (strict)", "Gain", "Per field", "queue", "Sample answers"):
        assert part in report, part


def test_playground_streams_the_tuned_model(flow):
    assert flow["model"].startswith("ft:tiny:alice:tickets-v1:")
    assert flow["answer_b"].strip()
    assert flow["pieces_b"] >= 2  # the answer arrived in pieces, not at once
    assert flow["model"] in flow["models_text"]


FIRST_LOAD = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const res = performance.getEntriesByType("resource");
  const paint = performance.getEntriesByName("first-contentful-paint")[0];
  return {bytes: nav.encodedBodySize + res.reduce((s, r) => s + r.encodedBodySize, 0), files: res.length + 1,
          first_paint_ms: paint ? paint.startTime : null, loaded_ms: nav.loadEventEnd, ready_ms: performance.now()};
}"""


def test_first_load_is_small(browser, console, shots):
    """What the first page load fetches (the sign-in page: HTML, styles, scripts, the chart library), each time
    in a fresh browser context (nothing cached); its timings go to first-load.json for the notes, not asserted."""
    loads = []
    for _ in range(3):
        t = new_tab(browser, console)
        t.page.goto(console.root + "/")
        expect(t.page.get_by_role("heading", name="Sign in")).to_be_visible()
        loads.append(t.page.evaluate(FIRST_LOAD))
        t.context.close()
        t.check()
    (shots / "first-load.json").write_text(json.dumps(loads, indent=1))
    assert all(load["bytes"] < 300_000 for load in loads), loads


def test_bad_file_shows_its_line_numbered_problem(browser, console, tmp_path, shots):
    t = new_tab(browser, console)
    page = t.page
    sign_in(page, console.root)
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    text = (
        json.dumps(good) + "\n" + json.dumps(good) + '\n{"messages": [{"role": "user", "content": "cut off\n'
    )
    # dropped onto the drop zone, as a user drags a file from the desktop
    expect(page.locator("#drop")).to_be_visible()
    page.evaluate(
        """(text) => { const dt = new DataTransfer();
             dt.items.add(new File([text], 'broken.jsonl', {type: 'application/json'}));
             document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true})); }""",
        text,
    )
    expect(page.locator("#rejects")).to_contain_text("line 3", timeout=30_000)
    expect(page.get_by_role("alert")).to_contain_text("unusable records")
    page.screenshot(path=shots / "bad-file.png", full_page=True)
    page.once("dialog", lambda d: d.accept())  # "Delete broken.jsonl?"
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Your files")).to_be_visible()
    expect(page.locator("main")).not_to_contain_text("broken.jsonl")
    t.context.close()
    t.check()


def test_another_tenant_sees_none_of_it(browser, console, flow):
    t = new_tab(browser, console)
    page = t.page
    sign_in(page, console.root, BOB)
    page.goto(console.root + "/#/jobs")
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    page.goto(console.root + "/#/datasets")
    expect(page.get_by_text("No files yet")).to_be_visible()
    page.goto(console.root + f"/#/jobs/{flow['job']}")
    expect(page.get_by_role("alert")).to_contain_text("404")
    page.goto(console.root + "/#/models")
    expect(page.locator("main")).not_to_contain_text(flow["model"])
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('tuneforge.key')") is None
    t.context.close()
    t.check()


def test_offline_api_docs(browser, console, shots):
    t = new_tab(browser, console)
    page = t.page
    page.goto(console.root + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("tuneforge", timeout=30_000)
    page.screenshot(path=shots / "docs.png")
    page.goto(console.root + "/redoc")
    expect(page.locator("h1").first).to_contain_text("tuneforge", timeout=30_000)
    t.context.close()
    t.check()


PAGES = ["#/datasets", "#/jobs", "#/jobs/new", "#/models", "#/playground", "#/deployments", "#/feedback"]


@pytest.mark.parametrize("width", ["wide", "narrow"])
def test_pages_are_accessible_at_both_widths(browser, console, flow, width, shots):
    """axe-core finds no serious or critical violation on any page; nothing overflows a phone's width."""
    from axe_playwright_python.sync_playwright import Axe

    viewport = NARROW if width == "narrow" else {"width": 1280, "height": 800}
    t = new_tab(browser, console, viewport)
    page = t.page
    axe = Axe()
    found = {}
    page.goto(console.root + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    pages = ["sign-in", *PAGES, f"#/datasets/{flow['file']}", f"#/jobs/{flow['job']}"]
    for i, where in enumerate(pages):
        if i == 1:
            sign_in(page, console.root)
        if where != "sign-in":
            page.goto(console.root + "/" + where)
            expect(page.locator("main h1").first).to_be_visible()
            page.wait_for_load_state("networkidle")
        violations = [
            f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
            for v in axe.run(page).response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        if violations:
            found[where] = violations
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 1:
            found.setdefault(where, []).append(f"wider than the window by {overflow}px")
    if width == "narrow":
        page.goto(console.root + f"/#/jobs/{flow['job']}")
        expect(page.locator("#loss-chart")).to_be_visible()
        page.screenshot(path=shots / "job-narrow.png", full_page=True)
    t.context.close()
    t.check()
    assert not found, found


def test_a_job_that_would_not_fit_is_refused_in_the_form(browser, console, flow, monkeypatch, shots):
    import tuneforge.models.memory as memory

    monkeypatch.setattr(memory, "memory_available", lambda device: 1 << 20)  # the server sees a 1 MiB device
    t = new_tab(browser, console)
    page = t.page
    sign_in(page, console.root)
    page.goto(console.root + f"/#/jobs/new?file={flow['file']}")
    page.get_by_label("Suffix").fill("too-big")
    page.get_by_role("button", name="Estimate memory and time").click()
    expect(page.locator("#estimate [role=alert]")).to_contain_text("would not fit", timeout=60_000)
    start = page.get_by_role("button", name="Start job")
    expect(start).to_be_disabled()
    page.screenshot(path=shots / "new-job-refused.png", full_page=True)
    page.get_by_label("Suffix").fill("smaller")  # a change to the form: the user may start it again
    expect(start).to_be_enabled()
    expect(page.get_by_label("Suffix")).to_have_value("smaller")
    t.context.close()
    t.check()


def test_keyboard_only_sign_in_and_navigation(browser, console):
    t = new_tab(browser, console)
    page = t.page
    page.goto(console.root + "/")
    expect(page.get_by_label("API key")).to_be_focused()  # the form takes the focus: type, press Enter
    page.keyboard.type("sk-test-alice-0001")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Datasets")).to_be_visible()
    page.goto(console.root + "/#/datasets")
    page.reload()  # focus starts at the top of the page
    expect(page.get_by_role("heading", name="Datasets")).to_be_visible()
    names = []
    for _ in range(6):  # the skip link, then the header's links, in order
        page.keyboard.press("Tab")
        names.append(page.evaluate("document.activeElement.textContent.trim()"))
    assert names[:4] == ["Skip to content", "tuneforge", "Datasets", "Jobs"], names
    while page.evaluate("document.activeElement.textContent.trim()") != "Jobs":
        page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    t.context.close()
    t.check()


def test_feedback_page_rates_a_stored_answer_and_makes_training_files(browser, console, flow, shots):
    from tests.jobs.service_fixtures import client

    c = client(console)
    stored = c.chat.completions.create(
        model=flow["model"],
        messages=[{"role": "user", "content": "Where is my parcel?"}],
        max_tokens=8,
        store=True,
    )
    t = new_tab(browser, console)
    page = t.page
    sign_in(page, console.root)
    page.get_by_role("link", name="Feedback", exact=True).click()
    card = page.locator(f"#stored-{stored.id}")
    expect(card).to_contain_text(flow["model"])
    card.locator("summary").click()
    expect(card).to_contain_text("Where is my parcel?")
    card.get_by_role("button", name=re.compile("Good answer")).click()
    expect(card.locator("table")).to_contain_text("up")
    got = c.get(f"/chat/completions/{stored.id}/feedback", cast_to=object)  # what the server kept
    assert [(f["user"], f["thumbs"]) for f in got["data"]] == [("console", "up")]
    page.get_by_role("button", name="Make training files from feedback").click()
    expect(page.locator("main")).to_contain_text("Written (purpose fine-tune)")
    page.screenshot(path=shots / "feedback.png", full_page=True)
    page.get_by_role("link", name=re.compile(r"^kto file-")).click()
    expect(page.locator("#summary")).to_contain_text("preference")
    t.context.close()
    t.check()


def test_a_reinforcement_job_from_the_form_sends_its_grader(browser, console, flow, shots):
    """The objective `reinforcement` shows a grader field; text that is not JSON, and a grader the server refuses,
    are shown in the form with the field focused; a weighted grader starts a job that carries it."""
    from tests.jobs.service_fixtures import client

    t = new_tab(browser, console)
    page = t.page
    sign_in(page, console.root)
    page.goto(console.root + f"/#/jobs/new?file={flow['file']}")
    grader = page.get_by_label("Grader (JSON)")
    expect(grader).to_be_hidden()
    page.get_by_label("Objective").select_option("reinforcement")
    expect(grader).to_be_visible()
    page.get_by_label("Max steps").fill("1")
    start = page.get_by_role("button", name="Start job")
    grader.fill("{not json")
    start.click()
    expect(page.locator("#form-status")).to_contain_text("The grader is not JSON")
    expect(grader).to_be_focused()
    grader.fill(json.dumps({"type": "python", "source": "def grade(sample, item): return 1.0"}))
    start.click()
    expect(page.locator("#form-status")).to_contain_text("runs the caller's code")
    weighted = {
        "type": "multi",
        "graders": {
            "fields": {
                "type": "field_match",
                "fields": ["queue", "priority"],
                "reference": "{{item.answer}}",
            },
            "json": {"type": "json_valid"},
        },
        "calculate_output": "0.8 * fields + 0.2 * json",
    }
    grader.fill(json.dumps(weighted))
    page.screenshot(path=shots / "new-job-reinforcement.png", full_page=True)
    start.click()
    expect(page).to_have_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]
    c = client(console)
    job = c.fine_tuning.jobs.retrieve(job_id)
    assert job.method.type == "reinforcement"
    assert job.method.reinforcement.grader.model_dump(exclude_none=True) == weighted
    c.fine_tuning.jobs.cancel(job_id)  # the worker has other tests' jobs to run
    t.context.close()
    t.check()
