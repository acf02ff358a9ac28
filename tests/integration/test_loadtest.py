"""Locust, headless and in its own process, against a router started here: the reports a user reads,
429s and cold starts on their own rows, and the SLO gate's exit status."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Router, function_copy

pytestmark = pytest.mark.slow

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def locust(router: Router, key: str, folder: Path, seconds: int, *extra: str,
           function: str = "sentiment") -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4",
               "-t", f"{seconds}s", "--host", router.url, "--only-summary", "--csv", str(folder / "stats"),
               "--html", str(folder / "report.html"), "--json-file", str(folder / "stats"),
               "--slo-report", str(folder / "slo.json"), *extra]
    env = {**os.environ, "FNSERVE_API_KEY": key, "FNSERVE_FUNCTION": function}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)


def rows(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "stats_stats.csv").open(newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def test_locust_run_reports_and_counts_throttling_and_cold_starts_apart(router: Router, example_dir: Path,
                                                                         tmp_path: Path) -> None:
    private = function_copy(example_dir, tmp_path / "sentiment", auth={"public": False})  # the key's limits apply
    router.cli("deploy", str(private), check=True)
    created = json.loads(router.cli("keys", "create", "--name", "locust", "--rps", "50", "--burst", "10", "--json",
                                    check=True).stdout)
    folder = tmp_path / "run"
    result = locust(router, created["token"], folder, 10, "--slo-p95", "2000")

    assert result.returncode == 0, result.stderr[-3000:]
    assert {"report.html", "stats.json", "stats_stats.csv", "slo.json"} <= {p.name for p in folder.iterdir()}
    stats = rows(folder)
    total = stats["Aggregated"]
    assert int(total["Request Count"]) > 100 and int(total["Failure Count"]) == 0
    # 4 closed-loop users against a 50 req/s key: most answers are 429s, counted apart and not as failures
    throttled = sum(int(stats[n]["Request Count"]) for n in ("V1 predict 429", "V2 infer 429") if n in stats)
    served = sum(int(stats[n]["Request Count"]) for n in ("V1 predict", "V2 infer") if n in stats)
    assert throttled > 0 and served > 0
    assert served <= 10 + 50 * 12  # burst + rate × the run (and a little slack for start-up)
    # the function started at zero: the first answers waited for a replica and have their own row
    assert any(name.endswith("cold start") for name in stats), sorted(stats)
    assert "SLO verdict: PASS" in result.stderr
    assert json.loads((folder / "slo.json").read_text())["passed"] is True
    assert "<html" in (folder / "report.html").read_text()[:2000].lower()

    # the same load with an impossible p95: the run fails, as a pipeline step would
    failing = locust(router, created["token"], tmp_path / "strict", 3, "--slo-p95", "0.001")
    assert failing.returncode == 1
    assert "SLO verdict: FAIL" in failing.stderr and "FAIL p95 " in failing.stderr
    assert json.loads((tmp_path / "strict" / "slo.json").read_text())["passed"] is False
