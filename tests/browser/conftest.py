"""Fixtures of the console's browser tests: a live `tuneforge serve` app on the tiny model with a real worker
process, and Debian's Chromium driven by Playwright (its own browser download needs internet; `make test`
installs the `chromium` package where it can).

Every page a test opens refuses requests that leave the server's origin and fails the test on them and on any
uncaught script error: the console must work on a machine without internet. Screenshots go to the test
session's folder, or to $TUNEFORGE_SCREENSHOTS (the README's pictures are made with
TUNEFORGE_SCREENSHOTS=docs/console).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jobs.service_fixtures import (  # noqa: F401
    ALICE,
    kill_group,
    live_server,
    service_settings,
    start_worker,
    tiny_base,
)

WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}  # a phone


def chromium() -> str | None:
    return (
        os.environ.get("TUNEFORGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="session")
def browser():
    path = chromium()
    if path is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; `make test` installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory, tiny_base) -> Iterator:  # noqa: F811 - the imported fixture
    """The server (uvicorn in a thread) and one worker process, shared by a module's tests."""
    root = tmp_path_factory.mktemp("console")
    settings = service_settings(root / "data", tiny_base, max_length=320)
    with live_server(settings) as srv:
        worker = start_worker(settings, root / "worker.log")
        srv.settings, srv.log = settings, root / "worker.log"
        try:
            yield srv
        finally:
            kill_group(worker)


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("TUNEFORGE_SCREENSHOTS")
    folder = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Tab:
    """A browser page on the console that records what it must never do: ask another origin, throw."""

    def __init__(self, context, origin: str):
        self.context, self.origin = context, origin
        self.page = context.new_page()
        self.off_origin: list[str] = []
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.origin + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.off_origin.append(url)
            route.abort()

    def check(self) -> None:
        assert not self.off_origin, f"requests left the server's origin: {self.off_origin}"
        assert not self.errors, f"script errors: {self.errors}"


@pytest.fixture
def tab(browser, console) -> Iterator[Tab]:
    context = browser.new_context(viewport=WIDE)
    t = Tab(context, console.root)
    yield t
    context.close()
    t.check()


def new_tab(browser, console, viewport=WIDE) -> Tab:
    return Tab(browser.new_context(viewport=viewport), console.root)


def sign_in(page, root: str, key: str = ALICE) -> None:
    from playwright.sync_api import expect

    page.goto(root + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
