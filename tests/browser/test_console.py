"""The web console in a real browser (headless Chromium) against a real router: sign-in and where the key
is kept; a router that fails to answer (the key kept, a retry); the functions list and a function's page
(try it while it scales from zero, its live log, rollback, canary promote and drop, train and follow the
job, cancel a job); keys and their one-time secrets; usage and limits for an admin and for a key of its
own; markup from users shown as text; a phone's screen and the keyboard; a list of a thousand functions.
Every test also fails on any console error, warning or uncaught exception it did not expect
(tests/browser/conftest.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Route, expect

from tests.browser.conftest import Console, deploy
from tests.conftest import Router, function_copy, http, wait_for

pytestmark = pytest.mark.slow

IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=1</script>"


def row(console: Console, testid: str, **data: str) -> Any:
    selector = f'[data-testid="{testid}"]' + "".join(f'[data-{k}="{v}"]' for k, v in data.items())
    return console.page.locator(selector)


def nav_link(console: Console, name: str) -> Any:
    """A link of the header's navigation."""
    return console.page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def create_key(router: Router, name: str, **options: Any) -> tuple[str, str]:
    """A new key through the API: (its id, its token)."""
    answer = router.api.create_key(name, **options)
    return answer["key"]["id"], answer["token"]


def test_sign_in_keeps_the_key_in_session_storage_only(console: Console) -> None:
    page, router = console.page, console.router
    page.goto(router.url + "/")  # / → /console → #/signin: no key yet
    expect(page).to_have_url(re.compile(r"/console#/signin$"))

    console.allow_http(401, "/api/me")
    page.get_by_label("API key").fill("fns_not_a_key")
    page.get_by_label("API key").press("Enter")
    expect(page.get_by_test_id("signin-error")).to_contain_text("not accepted")
    expect(page).to_have_url(re.compile(r"#/signin$"))
    assert page.evaluate("sessionStorage.length") == 0

    page.get_by_label("API key").fill(router.admin_key)
    page.get_by_label("API key").press("Enter")
    expect(page).to_have_url(re.compile(r"#/functions$"))
    expect(row(console, "function-row", name="sentiment")).to_be_visible()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link")).to_have_text(["Functions", "Jobs", "Keys", "Usage", "Audit"])

    assert page.evaluate("sessionStorage.getItem('fnserve.apiKey')") == router.admin_key
    assert page.evaluate("localStorage.length") == 0
    assert console.context.cookies() == []
    assert router.admin_key not in page.url
    page.reload()  # the tab's session survives a reload
    expect(row(console, "function-row", name="sentiment")).to_be_visible()
    assert router.admin_key not in page.url
    console.go("#/functions/%E0")  # a malformed escape is a page that does not exist, not an error
    expect(page).to_have_url(re.compile(r"#/functions$"))
    expect(row(console, "function-row", name="sentiment")).to_be_visible()

    page.get_by_test_id("sign-out").click()
    expect(page).to_have_url(re.compile(r"#/signin$"))
    assert page.evaluate("sessionStorage.length") == 0
    console.go("#/keys")  # signed out: every page leads to sign-in
    expect(page).to_have_url(re.compile(r"#/signin$"))


def test_a_router_that_fails_to_answer_keeps_the_key_and_offers_a_retry(console: Console) -> None:
    page, router = console.page, console.router
    console.sign_in(router.admin_key)
    expect(row(console, "function-row", name="sentiment")).to_be_visible()

    console.allow_http(503, "/api/me")
    answered = []

    def unavailable(route: Route) -> None:  # as a router whose database is down answers
        answered.append(route.request.url)
        route.fulfill(status=503, content_type="application/json",
                      body=json.dumps({"error": "the state database is unavailable"}))

    page.route(re.compile(r"/api/me$"), unavailable)
    page.reload()  # who the key is must be asked again: not a 401, so not signed out
    expect(page.get_by_role("heading", name="The router is not available")).to_be_visible()
    expect(page.get_by_test_id("status")).to_have_text("the state database is unavailable")
    retry = page.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    expect(page).to_have_url(re.compile(r"#/functions$"))
    assert page.evaluate("sessionStorage.getItem('fnserve.apiKey')") == router.admin_key
    assert len(answered) == 1

    page.unroute(re.compile(r"/api/me$"))
    retry.focus()
    page.keyboard.press("Enter")  # a real button: the keyboard works it
    expect(row(console, "function-row", name="sentiment")).to_be_visible()
    expect(page.get_by_role("heading", name="The router is not available")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('fnserve.apiKey')") == router.admin_key


def test_try_it_answers_and_the_function_scales_from_zero(console: Console) -> None:
    router = console.router
    wait_for(lambda: router.api.function("sentiment")["actual"] == 0, 90, "sentiment to be scaled to zero")
    console.sign_in(router.admin_key)
    listed = row(console, "function-row", name="sentiment")
    expect(listed.locator('[data-col="replicas"]')).to_have_text(re.compile(r"^0 / "))
    expect(listed.locator('[data-col="ready"]')).to_have_text("ready")
    expect(listed.locator('[data-col="labels"]')).to_contain_text("example=true")
    listed.get_by_role("link", name="sentiment").click()
    expect(console.page).to_have_url(re.compile(r"#/functions/sentiment$"))

    page = console.page
    replicas = page.get_by_test_id("fact-replicas")
    expect(replicas).to_have_text(re.compile(r"^0 / "))
    body = page.get_by_label("Request body (JSON)")
    expect(body).to_have_value(re.compile(r'"instances"'))
    expect(page.get_by_test_id("tryit-path")).to_have_text("/v1/models/sentiment:predict")

    body.fill("{not json")  # an inline error, nothing sent
    page.get_by_test_id("tryit-send").click()
    expect(page.get_by_test_id("tryit-error")).to_contain_text("not valid JSON")
    expect(page.get_by_test_id("tryit-answer")).to_be_hidden()

    page.get_by_label("Example", exact=True).select_option(index=1)  # "a terrible, boring waste of time"
    expect(body).to_have_value(re.compile("terrible"))
    page.get_by_test_id("tryit-send").click()
    expect(page.get_by_test_id("tryit-status")).to_have_text(re.compile(r"^200\b"), timeout=90_000)
    answer = json.loads(page.get_by_test_id("tryit-output").text_content() or "")
    assert answer["predictions"][0]["label"] == "negative"
    expect(page.get_by_test_id("tryit-error")).to_be_empty()
    headers = page.get_by_test_id("tryit-headers")
    serving = str(router.api.function("sentiment")["revision"])
    expect(headers.locator('[data-header="x-fnserve-revision"]')).to_have_text(serving)
    expect(headers.locator('[data-header="x-request-id"]')).to_have_text(re.compile(r"^[0-9a-f]{16,}$"))
    expect(headers.locator('[data-header="x-fnserve-cold-start"]')).to_be_visible()
    expect(page.get_by_test_id("tryit-time")).to_contain_text("ms")

    expect(replicas).to_have_text(re.compile(r"^1 / "))  # the poll saw the replica, no reload
    expect(page.get_by_test_id("log")).to_contain_text(f"sentiment-{int(serving):05d}", timeout=30_000)  # live
    expect(page.get_by_test_id("replica-row")).to_have_count(1)
    expect(page.get_by_test_id("cold-start").first).to_contain_text("model load")
    nav_link(console, "Functions").click()
    expect(listed.locator('[data-col="replicas"]')).to_have_text(re.compile(r"^1 / "))
    expect(listed.locator('[data-col="coldStarts"]')).not_to_have_text("0")


def test_a_new_key_secret_is_shown_once_and_the_key_can_be_revoked(console: Console) -> None:
    page, router = console.page, console.router
    console.sign_in(router.admin_key)
    nav_link(console, "Keys").click()
    expect(page).to_have_url(re.compile(r"#/keys$"))

    console.allow_http(400, "/api/keys")  # the router's own refusal, shown in the form
    page.get_by_label("Name (required)").fill("ci-bot")
    page.get_by_label("Scopes, comma separated").fill("invoke:sentiment, everything")
    page.get_by_test_id("create-key").click()
    expect(page.get_by_test_id("form-error")).to_contain_text("scopes")
    expect(page.get_by_test_id("new-token")).to_have_count(0)

    page.get_by_label("Scopes, comma separated").fill("invoke:sentiment")
    page.get_by_label("Requests / day").fill("1000")
    page.get_by_test_id("create-key").click()
    panel = page.get_by_test_id("new-token")
    expect(panel).to_be_visible()
    token = page.get_by_test_id("token-value").text_content() or ""
    assert token.startswith("fns_")
    expect(page.get_by_test_id("form-error")).to_be_empty()
    created = row(console, "key-row", name="ci-bot")
    expect(created).to_have_count(1)
    key_id = created.get_attribute("data-id")
    assert key_id and key_id in token
    assert http("GET", f"{router.url}/api/me", headers={"Authorization": f"Bearer {token}"})[0] == 200

    page.get_by_test_id("token-done").click()
    expect(panel).to_have_count(0)
    assert token not in page.content()
    page.reload()
    expect(row(console, "key-row", name="ci-bot")).to_have_count(1)
    assert token not in page.content()
    assert page.evaluate("(t) => JSON.stringify(sessionStorage).includes(t)", token) is False

    created.get_by_test_id("rotate").click()
    created.get_by_test_id("confirm-yes").click()
    rotated = page.get_by_test_id("token-value").text_content() or ""
    assert rotated.startswith(f"fns_{key_id}") and rotated != token
    assert http("GET", f"{router.url}/api/me", headers={"Authorization": f"Bearer {rotated}"})[0] == 200
    page.get_by_test_id("token-done").click()
    expect(page.get_by_test_id("new-token")).to_have_count(0)
    assert rotated not in page.content()
    expect(created.locator('[data-col="state"]')).to_contain_text("old secret still valid")

    created.get_by_test_id("revoke").click()
    created.get_by_test_id("confirm-yes").click()
    expect(created).to_have_attribute("data-state", "revoked")
    assert next(k for k in router.api.keys()["keys"] if k["id"] == key_id)["revokedAt"] is not None
    assert http("GET", f"{router.url}/api/me", headers={"Authorization": f"Bearer {rotated}"})[0] == 401


def test_roll_back_to_an_earlier_revision(console: Console, example_dir: Path, tmp_path: Path) -> None:
    router = console.router
    folder = function_copy(example_dir, tmp_path / "rollme", name="rollme", auth={"public": False})
    deploy(router, folder, {"round": "1"})
    assert deploy(router, folder, {"round": "2"})["revision"] == 2
    console.sign_in(router.admin_key)
    console.go("#/functions/rollme")
    page = console.page
    first, second = row(console, "revision-row", revision="1"), row(console, "revision-row", revision="2")
    expect(second.locator('[data-col="state"]')).to_have_text("current")
    expect(second.get_by_test_id("rollback")).to_have_count(0)
    expect(page.get_by_test_id("fact-labels")).to_contain_text("round=2")

    first.get_by_test_id("rollback").click()
    first.get_by_test_id("confirm-no").click()  # asked, not done
    expect(first.get_by_test_id("rollback")).to_be_visible()
    assert router.api.function("rollme")["revision"] == 2

    first.get_by_test_id("rollback").click()
    first.get_by_test_id("confirm-yes").click()
    expect(first.locator('[data-col="state"]')).to_have_text("current")
    expect(second.get_by_test_id("rollback")).to_be_visible()
    expect(page.get_by_test_id("fact-revision")).to_have_text("1")
    expect(page.get_by_test_id("fact-labels")).to_contain_text("round=1")
    assert router.api.function("rollme")["revision"] == 1
    assert router.api.revisions("rollme")["current"] == 1


def test_train_from_the_function_page_and_follow_the_job(console: Console) -> None:
    router = console.router
    console.sign_in(router.admin_key)
    console.go("#/functions/sentiment")
    page = console.page
    page.get_by_test_id("train").click()
    expect(page).to_have_url(re.compile(r"#/jobs/[^/]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    state = page.get_by_test_id("fact-state")
    log = page.get_by_test_id("log")

    expect(state).to_have_text("running", timeout=60_000)
    expect(log).to_contain_text("fnserve-job", timeout=30_000)  # lines while it runs
    early = (log.text_content() or "").count("\n")
    expect(state).to_have_text("succeeded", timeout=120_000)
    expect(log).to_contain_text("succeeded")
    assert (log.text_content() or "").count("\n") > early
    expect(page.get_by_test_id("job-metrics")).to_contain_text("accuracy")
    expect(page.get_by_test_id("cancel-job")).to_have_count(0)
    assert router.api.job(job_id)["state"] == "succeeded"

    nav_link(console, "Jobs").click()
    expect(row(console, "job-row", id=job_id)).to_have_attribute("data-state", "succeeded")


def test_promote_and_drop_a_canary(console: Console, example_dir: Path, tmp_path: Path) -> None:
    router = console.router
    folder = function_copy(example_dir, tmp_path / "canary", name="canary", auth={"public": False})
    deploy(router, folder)
    location = {"sourceDir": str(folder.resolve())}
    manifest = yaml.safe_load((folder / "function.yaml").read_text())
    router.api.deploy(manifest, location, str(folder), canary=25)
    console.sign_in(router.admin_key)
    console.go("#/functions/canary")
    page = console.page
    expect(page.get_by_test_id("fact-canary")).to_have_text("revision 2 · 25%")
    expect(row(console, "revision-row", revision="2").locator('[data-col="state"]')).to_have_text("canary")
    page.get_by_test_id("drop-canary").click()
    page.get_by_test_id("confirm-yes").click()
    expect(page.get_by_test_id("fact-canary")).to_have_text("none")
    expect(page.get_by_test_id("drop-canary")).to_have_count(0)
    assert router.api.function("canary")["canaryRevision"] is None

    router.api.deploy(manifest, location, str(folder), canary=10)
    expect(page.get_by_test_id("promote")).to_be_visible()  # seen by the poll
    page.get_by_test_id("promote").click()
    page.get_by_test_id("confirm-yes").click()
    expect(page.get_by_test_id("fact-revision")).to_have_text("3")
    expect(page.get_by_test_id("fact-canary")).to_have_text("none")
    assert router.api.function("canary")["revision"] == 3


def test_cancel_a_running_job(console: Console, example_dir: Path) -> None:
    router = console.router
    manifest = yaml.safe_load((example_dir / "train.yaml").read_text())
    job = router.api.submit_job(manifest, {"sourceDir": str(example_dir.resolve())}, "train.yaml",
                                {"epochs": 5000})
    console.sign_in(router.admin_key)
    console.go(f"#/jobs/{job['id']}")
    page = console.page
    expect(page.get_by_test_id("fact-state")).to_have_text("running", timeout=60_000)
    page.get_by_test_id("cancel-job").click()
    page.get_by_test_id("confirm-yes").click()
    expect(page.get_by_test_id("fact-state")).to_have_text("cancelled", timeout=60_000)
    expect(page.get_by_test_id("cancel-job")).to_have_count(0)
    assert router.api.job(job["id"])["state"] == "cancelled"


def test_admin_usage_shows_each_key_and_its_limits(console: Console) -> None:
    router = console.router
    key_id, token = create_key(router, "metered", scopes=["invoke:sentiment"], limits={"daily": 50})
    for _ in range(2):
        status, _, _ = http("POST", f"{router.url}/v1/models/sentiment:predict", {"instances": ["good"]},
                            headers={"Authorization": f"Bearer {token}"}, timeout=90)
        assert status == 200
    console.sign_in(router.admin_key)
    nav_link(console, "Usage").click()
    page = console.page
    quota = page.locator(f'[data-testid="key-quota"][data-key="{key_id}"]')
    expect(quota).to_contain_text("metered")
    expect(quota.locator('[data-limit="daily"]').get_by_test_id("quota-text")).to_have_text("2 / 50 requests today")
    expect(quota.locator('[data-limit="daily"]')).to_have_attribute("data-function", "")  # the key-wide limit
    expect(page.get_by_role("heading", name="Last 7 days")).to_be_visible()
    mine = page.get_by_test_id("usage-row").filter(has=page.locator(f'[data-col="key"]:text-is("{key_id}")'))
    expect(mine.locator('[data-col="requests"]')).to_have_text("2")
    expect(mine.locator('[data-col="function"]')).to_have_text("sentiment")


def test_markup_from_users_is_shown_as_text(console: Console, example_dir: Path, tmp_path: Path) -> None:
    router = console.router
    folder = function_copy(example_dir, tmp_path / "markup", name="markup", auth={"public": False})
    deploy(router, folder, {"img": IMG, "script": SCRIPT})
    key_id, _ = create_key(router, IMG, tenant=SCRIPT)
    console.sign_in(router.admin_key)
    page = console.page

    def assert_inert() -> None:
        assert page.evaluate("window.__pwned") is None
        assert page.locator('img[src="x"]').count() == 0
        assert page.locator("script").count() == 1  # the console's own module only

    labels = row(console, "function-row", name="markup").locator('[data-col="labels"]')
    expect(labels).to_contain_text(f"img={IMG}")
    expect(labels).to_contain_text(f"script={SCRIPT}")
    assert_inert()
    console.go("#/functions/markup")
    expect(page.get_by_test_id("fact-labels")).to_contain_text(f"img={IMG}")
    expect(page.get_by_test_id("revision-row")).to_have_count(1)
    assert_inert()
    console.go("#/keys")
    key_row = row(console, "key-row", id=key_id)
    expect(key_row.locator('[data-col="name"]')).to_have_text(IMG)
    expect(key_row.locator('[data-col="tenant"]')).to_have_text(SCRIPT)
    assert_inert()
    console.go("#/audit")
    page.get_by_label("Action starts with").fill("key.")
    page.get_by_label("Action starts with").press("Enter")
    expect(page.get_by_test_id("audit-row").first).to_contain_text(IMG)
    expect(page.locator('[data-testid="audit-row"] [data-col="action"]').first).to_have_text(re.compile(r"^key\."))
    assert_inert()


def test_a_non_admin_key_sees_its_functions_and_its_usage(console: Console, example_dir: Path,
                                                          tmp_path: Path) -> None:
    router = console.router
    deploy(router, function_copy(example_dir, tmp_path / "hidden", name="hidden", auth={"public": False}))
    key_id, token = create_key(router, "reader", scopes=["invoke:sentiment"], limits={"daily": 1000})
    status, _, _ = http("POST", f"{router.url}/v1/models/sentiment:predict", {"instances": ["fine"]},
                        headers={"Authorization": f"Bearer {token}"}, timeout=90)
    assert status == 200
    console.sign_in(token)
    page = console.page
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link")).to_have_text(["Functions", "Usage"])
    expect(page.get_by_test_id("function-row")).to_have_count(1)
    expect(row(console, "function-row", name="sentiment")).to_be_visible()

    nav.get_by_role("link", name="Usage").click()
    bar = page.locator('[data-testid="quota-bar"][data-limit="daily"]')
    expect(bar.get_by_test_id("quota-text")).to_have_text("1 / 1,000 requests today")
    expect(bar.locator("meter")).to_have_attribute("value", "1")
    expect(page.get_by_role("heading", name="Last 30 days")).to_be_visible()  # what /api/me gives a key
    expect(page.get_by_test_id("usage-row")).to_have_count(1)
    expect(page.get_by_test_id("usage-row").locator('[data-col="key"]')).to_have_text(key_id)

    console.go("#/keys")  # not this key's page
    expect(page.get_by_role("heading", name="Not for this key")).to_be_visible()

    console.go("#/functions/sentiment")  # its function's page, built from /api/me: facts and try-it
    expect(page.get_by_test_id("fact-runtime")).to_have_text("onnx")
    expect(page.get_by_test_id("tryit-path")).to_have_text("/v1/models/sentiment:predict")
    expect(page.get_by_test_id("revision-row")).to_have_count(0)  # revisions, replicas and logs are the admin's
    expect(page.get_by_role("heading", name="Replicas")).to_have_count(0)
    expect(page.get_by_test_id("chart-latency")).to_be_visible()  # its live numbers are anyone's who may call it
    expect(page.get_by_label("Request body (JSON)")).to_have_value(re.compile(r"wonderful film"))  # its example
    page.get_by_label("Request body (JSON)").fill('{"instances": ["a wonderful film"]}')
    page.get_by_test_id("tryit-send").click()
    expect(page.get_by_test_id("tryit-status")).to_have_text(re.compile(r"^200\b"))
    expect(page.get_by_test_id("tryit-output")).to_contain_text("positive")

    console.go("#/functions")  # a 401 anywhere leads back to sign-in, with the reason
    expect(page.get_by_test_id("function-row")).to_have_count(1)
    console.allow_http(401, "/api/me")
    router.api.revoke_key(key_id)
    expect(page).to_have_url(re.compile(r"#/signin$"))
    expect(page.get_by_test_id("signin-error")).to_contain_text("revoked")
    assert page.evaluate("sessionStorage.length") == 0


def test_phone_screen_no_sideways_scroll_and_keyboard_sign_in(phone: Console) -> None:
    page, router = phone.page, phone.router
    page.goto(phone.url())
    expect(page).to_have_url(re.compile(r"#/signin$"))
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(router.admin_key)
    page.keyboard.press("Tab")
    expect(page.get_by_test_id("signin")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/functions$"))
    expect(row(phone, "function-row", name="sentiment")).to_be_visible()

    def fits() -> bool:
        return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    assert fits()
    phone.go("#/functions/sentiment")
    expect(page.get_by_test_id("revision-row").first).to_be_visible()
    expect(page.get_by_test_id("chart-latency")).to_be_visible()
    assert fits()
    phone.go("#/keys")
    expect(page.get_by_test_id("key-row").first).to_be_visible()
    assert fits()


def test_a_thousand_functions_render_fast_and_update_in_place(console: Console) -> None:
    router = console.router
    calls = {"n": 0}

    def summary(i: int, rpm: int) -> dict[str, Any]:
        return {"name": f"fn-{i:04d}", "revision": 1, "runtime": "onnx", "url": f"/v1/models/fn-{i:04d}:predict",
                "ready": i % 7 != 0, "message": "", "replicas": [], "desired": 1, "queued": 0, "actual": i % 3,
                "inFlight": 0, "labels": {"team": f"t{i % 5}"}, "trainable": False,
                "stats": {"rpm": rpm, "p50Ms": 3.5, "p95Ms": 12.25, "errors": 0, "requests": 10, "coldStarts": 1}}

    def fleet(route: Route) -> None:
        calls["n"] += 1
        body = {"functions": [summary(i, 7 if (i == 500 and calls["n"] > 1) else 0) for i in range(1000)]}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    console.sign_in(router.admin_key, "#/functions")
    console.go("#/keys")
    console.page.route(re.compile(r"/api/functions\?view=brief$"), fleet)
    took = console.page.evaluate("""async () => {
        const start = performance.now();
        location.hash = '#/functions';
        while (document.querySelectorAll('[data-testid="function-row"]').length < 1000)
            await new Promise((r) => setTimeout(r, 5));
        document.body.getBoundingClientRect();  // laid out, as it is shown
        const took = performance.now() - start;
        document.querySelector('[data-name="fn-0500"]').dataset.marker = 'same';
        return took;
    }""")
    # the goal (< 1 s) is make bench's to measure (bench/console.py); this bound only catches a table that
    # became quadratic, on a machine as busy as a shared CI runner can be
    assert took < 5000, f"1,000 functions took {took:.0f} ms to appear"
    target = row(console, "function-row", name="fn-0500")
    expect(target.locator('[data-col="rpm"]')).to_have_text("7")  # the next poll
    expect(target).to_have_attribute("data-marker", "same")  # the same element, updated in place
    expect(row(console, "function-row", name="fn-0007").locator('[data-col="ready"]')).to_have_text("not ready")
