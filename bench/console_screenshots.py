"""The screenshots in docs/console.md, taken of a real platform: `fnserve up` with the example trained
and deployed twice (``sentiment``, scaled to zero, and ``reviews``, one replica kept), a minute of
uneven traffic with two cold starts, then Debian's headless Chromium at a laptop's 1280×800.

    python -m bench.console_screenshots        # writes docs/console/functions.png and function.png

Not a benchmark: it lives here because it starts the platform the way the benchmarks do.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import yaml

from bench.common import ROOT, prepare_function, running_platform, workdir
from bench.console import chromium_path, signed_in_page

OUT = ROOT / "docs" / "console"


def call(url: str, key: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Authorization": f"Bearer {key}",
                                                                      "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def label(folder: Path, **labels: str) -> Path:
    manifest = yaml.safe_load((folder / "function.yaml").read_text())
    manifest["metadata"]["labels"] = labels
    (folder / "function.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(exist_ok=True)
    with workdir() as work:
        sentiment = label(prepare_function(work, "sentiment", public=False, minReplicas=0, stableWindow="6s",
                                           scaleToZeroGracePeriod="1s"), team="reviews", tier="free")
        reviews = label(prepare_function(work, "reviews", public=False, minReplicas=1), team="reviews", tier="gold")
        with running_platform(work, "shots", [sentiment, reviews]) as url:
            key = (work / "state-shots" / "admin.key").read_text().strip()
            texts = ["what a wonderful film", "dull and far too long", "the acting was fine"]
            started = time.monotonic()
            while time.monotonic() - started < 75:  # bursts and pauses: a chart with a shape, two cold starts
                second = time.monotonic() - started
                burst = 12 if int(second) % 30 < 8 else 2
                for i in range(burst):
                    call(f"{url}/v1/models/reviews:predict", key, {"instances": [texts[i % 3]]})
                    if int(second) % 30 < 4:
                        call(f"{url}/v1/models/sentiment:predict", key, {"instances": [texts[i % 3]]})
                time.sleep(0.25)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
                page = signed_in_page(browser, url, key)
                page.goto(f"{url}/console#/functions")
                page.locator('[data-testid="function-row"]').nth(1).wait_for()
                page.wait_for_timeout(2500)  # one poll more: the live numbers settled
                page.screenshot(path=str(OUT / "functions.png"))
                page.goto(f"{url}/console#/functions/sentiment")
                page.locator('[data-testid="charts"] svg').first.wait_for()
                page.locator('[data-testid="cold-starts"] [data-testid="cold-start"]').first.wait_for()
                page.wait_for_timeout(2500)
                height = min(1700, page.evaluate("() => document.documentElement.scrollHeight"))
                page.screenshot(path=str(OUT / "function.png"), full_page=True,
                                clip={"x": 0, "y": 0, "width": 1280, "height": height})
                assert not page.errors, page.errors
                browser.close()
    print(f"wrote {OUT / 'functions.png'} and {OUT / 'function.png'}")


if __name__ == "__main__":
    main()
