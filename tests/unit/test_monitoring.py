"""manifests/monitoring: the alert rules pass `promtool check rules` and their unit tests (`promtool test
rules` with tests/fixtures/monitoring/rules_test.yaml), each alert's cases there do catch a broken rule,
every metric the rules and the dashboard read is one a running router exports (with the labels they
match on), and the ServiceMonitor scrapes the router's Service with a key that has the `metrics` scope.

promtool comes with Debian's `prometheus` package, installed here on first use when missing (the tests
that run it are marked slow; the package is large, the runs take a tenth of a second each).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fnserve.router.auth import METRICS_PATH
from tests.conftest import ROOT
from tests.services import ensure_debian_package
from tests.unit.test_render import KUBERNETES_VERSION, kustomized, the
from tests.unit.test_router_middlewares import Router, scenario

MONITORING = ROOT / "manifests" / "monitoring"
RULES_TEST = ROOT / "tests" / "fixtures" / "monitoring" / "rules_test.yaml"
SEVERITIES = {"critical", "warning", "info"}
TARGET_LABELS = {"namespace", "job", "instance", "pod", "service", "endpoint", "container"}
"""Labels Prometheus adds to every scraped series (from the ServiceMonitor's target), not the router."""
_METRIC = re.compile(r"\b(?:fnserve|process|python)_[a-z0-9_]+")
_SELECTOR = re.compile(r"\b((?:fnserve|process|python)_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


@pytest.fixture(scope="session")
def promtool() -> str:
    return ensure_debian_package("promtool", "prometheus")


def objects() -> list[dict[str, Any]]:
    return kustomized(MONITORING)


def rule_spec() -> dict[str, Any]:
    spec: dict[str, Any] = the(objects(), "PrometheusRule", "fnserve")["spec"]
    return spec


def alerts(spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [rule for group in (spec or rule_spec())["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    (generator,) = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())["configMapGenerator"]
    (name,) = generator["files"]
    data: dict[str, Any] = json.loads((MONITORING / name).read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def promtool_run(promtool: str, folder: Path, spec: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """promtool with ``spec`` (a PrometheusRule's) as the plain rule file rules.yaml and the unit tests
    beside it, in ``folder``."""
    (folder / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(RULES_TEST, folder / "rules_test.yaml")
    return subprocess.run([promtool, *args], cwd=folder, capture_output=True, text=True, timeout=60)


# -- promtool ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_rules_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    spec = rule_spec()
    result = promtool_run(promtool, tmp_path, spec, "check", "rules", "rules.yaml")
    count = sum(len(group["rules"]) for group in spec["groups"])
    assert result.returncode == 0 and f"SUCCESS: {count} rules found" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_the_rules_pass_their_unit_tests(promtool: str, tmp_path: Path) -> None:
    result = promtool_run(promtool, tmp_path, rule_spec(), "test", "rules", "rules_test.yaml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_the_unit_tests_catch_an_alert_that_never_fires_or_fires_too_soon(promtool: str, tmp_path: Path) -> None:
    names = {rule["alert"] for rule in alerts()}
    silent, hasty = rule_spec(), rule_spec()
    for rule in alerts(silent):
        rule["expr"] = "vector(1) == 0"
    for rule in alerts(hasty):
        rule.pop("for")
    for broken in (silent, hasty):
        result = promtool_run(promtool, tmp_path, broken, "test", "rules", "rules_test.yaml")
        failed = set(re.findall(r"alertname: (\w+),", result.stdout + result.stderr))
        assert result.returncode != 0 and failed == names, (names - failed, result.stdout + result.stderr)


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [case for test in yaml.safe_load(RULES_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    for name in {rule["alert"] for rule in alerts()}:
        outcomes = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == name]
        assert True in outcomes and False in outcomes, name
    severities = {(rule["alert"], rule["labels"]["severity"]) for rule in alerts()}
    tested = {(case["alertname"], alert["exp_labels"]["severity"]) for case in cases for alert in case["exp_alerts"]}
    assert severities == tested  # a warning and a critical of one alert are both seen firing


# -- the manifests ----------------------------------------------------------------------------------

def test_every_alert_says_how_bad_for_how_long_and_what_to_do() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    guide = (ROOT / "docs" / "operations.md").read_text()
    for name in {rule["alert"] for rule in alerts()}:
        assert f"`{name}`" in guide, f"docs/operations.md does not explain {name}"


def test_the_service_monitor_scrapes_the_router_service_with_a_metrics_key() -> None:
    base = kustomized(ROOT / "manifests" / "base")
    service = the(base, "Service")
    monitor = the(objects(), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    namespace = yaml.safe_load((ROOT / "manifests" / "base" / "kustomization.yaml").read_text())["namespace"]
    assert monitor["metadata"]["namespace"] == namespace and monitor["spec"]["namespaceSelector"] == {
        "matchNames": [namespace]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == METRICS_PATH
    secret = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer" and secret["key"] == "token"
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert f"kubectl -n {namespace} create secret generic {secret['name']} --from-literal=token=" in guide
    assert "fnserve keys create --name prometheus --scope metrics" in guide


def test_the_dashboard_is_a_configmap_grafana_s_sidecar_loads() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": generator["name"], "namespace": kustomization["namespace"],
                              "labels": generator["options"]["labels"]},
                 "data": {name: (MONITORING / name).read_text() for name in generator["files"]}}
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    board = dashboard()
    assert board["uid"] and board["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        used = set(re.findall(r"\$(\w+)", json.dumps(panel["targets"]))) - {"__rate_interval"}
        assert used <= variables, (panel["title"], used - variables)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


# -- the rules and the dashboard read what the router exports ---------------------------------------

def exported(text: str) -> dict[str, set[str]]:
    """The name of every series a scrape has samples of (a counter ``x`` is ``x_total``, a histogram
    ``x_bucket``, ``x_count`` and ``x_sum``), with the labels they carry."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_every_metric_the_rules_and_the_dashboard_read_is_exported(tmp_path: Path) -> None:
    scraped: list[str] = []

    async def body(r: Router) -> None:
        await r.key("prometheus", ["metrics"])
        for _ in range(3):
            await r.predict("limited", "invoker")  # 200, 200, 429
        await r.predict("sentiment", "narrow")
        # a streamed answer's numbers as accounting records them (the stream itself: test_router_generative)
        r.services.accounting.metrics.observe_stream("sentiment", 40.0, [5.0, 6.0], 7, 12)
        response = await r.client.get("/metrics", headers=r.auth("prometheus"))
        assert response.status_code == 200
        scraped.append(response.text)

    scenario(tmp_path, body)
    names = exported(scraped[0])
    exprs = [rule["expr"] for rule in alerts()] + dashboard_exprs()
    used = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert {"fnserve_requests_total", "fnserve_admission_decisions_total", "fnserve_replica_restarts_total",
            "fnserve_limiter_fail_open_total", "process_cpu_seconds_total", "fnserve_build_info"} <= used
    assert used <= set(names), sorted(used - set(names))
    for expr in exprs:
        for name, matchers in _SELECTOR.findall(expr):
            labels = set(_MATCHER.findall(matchers)) - TARGET_LABELS
            assert labels <= names[name], (name, labels - names[name])
    # what the scrape counted: these are the samples the alerts are about
    assert 'fnserve_admission_decisions_total{decision="rate",key="' in scraped[0]
    assert re.search(r'^fnserve_requests_total\{code="429",function="limited",revision="1"\} 1\.0$', scraped[0], re.M)
    assert 'fnserve_limiter_fail_open_total{limit="rate"} 0.0' in scraped[0]
    assert re.search(r'^fnserve_build_info\{implementation="\w+",python="[\d.]+",version="[^"]+"\} 1\.0$',
                     scraped[0], re.M)
    assert re.search(r"^process_resident_memory_bytes \d", scraped[0], re.M)


def test_a_metric_name_the_router_does_not_export_is_caught() -> None:
    """The check above can fail: a rule reading a misspelt name or label is found out."""
    names = exported("# HELP fnserve_requests Requests\n# TYPE fnserve_requests counter\n"
                     'fnserve_requests_total{function="f",code="200"} 1.0\n')
    assert "fnserve_requests_total" in names and "fnserve_request_total" not in names
    rule = copy.deepcopy(alerts()[0])["expr"].replace("fnserve_requests_total{", "fnserve_requests_total{status=\"1\",")
    (name, matchers), *_ = _SELECTOR.findall(rule)
    assert set(_MATCHER.findall(matchers)) - names[name] == {"status"}
