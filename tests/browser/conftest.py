"""Browser fixtures: one headless Chromium (Debian's, driven by Playwright) and one router with the example
deployed per module, and a page per test whose console errors, warnings and uncaught
exceptions fail the test unless the test said it expects them (a 401 on a wrong key, a 400 it provoked)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright import sync_api as playwright_api

from tests.conftest import Router, function_copy, running_router
from tests.services import ensure_debian_package

playwright_api.expect.set_options(timeout=15_000)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return ensure_debian_package("chromium", "chromium")


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """Chromium for a module's tests (one module today, so one per session). Not session-scoped: Playwright's
    sync API keeps an asyncio event loop running in this thread while it is started, and every later test
    that calls asyncio.run() would fail under it."""
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()


def deploy(router: Router, folder: Path, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Deploy the function in ``folder`` through the admin API (as `fnserve deploy` does for a router on
    this machine), with ``labels`` added to its metadata; the deployed summary."""
    manifest = yaml.safe_load((folder / "function.yaml").read_text())
    manifest["metadata"].setdefault("labels", {}).update(labels or {})
    return router.api.deploy(manifest, {"sourceDir": str(folder.resolve())}, str(folder))


@pytest.fixture(scope="module")
def console_router(tmp_path_factory: pytest.TempPathFactory, example_dir: Path) -> Iterator[Router]:
    """One router for the module's tests, with the example (`sentiment`, scaled to zero) deployed as a
    function that needs a key (so that try-it must send one, and a key's requests count as its own: a
    public function's are counted per address)."""
    with running_router(tmp_path_factory.mktemp("console") / "state") as router:
        folder = function_copy(example_dir, tmp_path_factory.mktemp("console-functions") / "sentiment",
                               auth={"public": False})
        deploy(router, folder)
        yield router


@dataclass
class Console:
    """A browser page on the console, and what it logged."""

    page: Any
    context: Any
    router: Router
    problems: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def url(self, hash_: str = "") -> str:
        return f"{self.router.url}/console{hash_}"

    def allow(self, pattern: str) -> None:
        """A console message matching ``pattern`` (a regex over "<type>: <text> @ <url>") is expected."""
        self.allowed.append(re.compile(pattern))

    def allow_http(self, status: int, path: str) -> None:
        """Chromium logs every 4xx/5xx answer to fetch() as a console error; this one is expected."""
        self.allow(rf"status of {status}\b.*@ [^ ]*{re.escape(path)}")

    def sign_in(self, key: str, then: str = "#/functions") -> None:
        self.page.goto(self.url("#/signin"))
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_label("API key").press("Enter")
        playwright_api.expect(self.page).to_have_url(re.compile(re.escape(then) + "$"))

    def go(self, hash_: str) -> None:
        """Navigate inside the app (no reload): as a click on a link would."""
        self.page.evaluate("(target) => { location.hash = target; }", hash_)

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(a.search(p) for a in self.allowed)]


@pytest.fixture
def console(browser: Any, console_router: Router) -> Iterator[Console]:
    """A fresh browser context (no sessionStorage, no cookies) with one page at 1280×800."""
    yield from _console(browser, console_router, {"width": 1280, "height": 800})


@pytest.fixture
def phone(browser: Any, console_router: Router) -> Iterator[Console]:
    """The same at a phone's 390×844, with touch."""
    yield from _console(browser, console_router, {"width": 390, "height": 844}, has_touch=True, is_mobile=True)


def _console(browser: Any, router: Router, viewport: dict[str, int], **options: Any) -> Iterator[Console]:
    context = browser.new_context(viewport=viewport, **options)
    context.set_default_timeout(15_000)
    page = context.new_page()
    seen = Console(page, context, router)

    def on_console(message: Any) -> None:
        if message.type in ("error", "warning"):
            where = (message.location or {}).get("url", "")
            seen.problems.append(f"{message.type}: {message.text} @ {where}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: seen.problems.append(f"pageerror: {error}"))
    try:
        yield seen
        page.close()  # a stream or poll cut off by closing must not log anything either
    finally:
        context.close()
    unexpected = seen.unexpected()
    assert not unexpected, "the console logged:\n" + "\n".join(unexpected)
