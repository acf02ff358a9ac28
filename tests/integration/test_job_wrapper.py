"""The job wrapper as a process: what it publishes, and that every other ending publishes nothing and
leaves no process behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, alive, run_job, wait_for

SCALE = ROOT / "tests" / "fixtures" / "scale"


def runs_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_success_publishes_files_then_a_manifest_with_metrics_params_and_source(tmp_path: Path) -> None:
    code, outcome, log = run_job(SCALE / "train.yaml", (tmp_path / "scale").as_uri(), "--params", '{"scale": 4}')
    assert code == 0, log
    run = tmp_path / "scale" / outcome["runId"]
    manifest = json.loads((run / "_manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["files"]) == ["metrics.json", "model.onnx"]
    assert manifest["metrics"] == outcome["metrics"] == {"scale": 4} and manifest["params"] == {"scale": 4}
    assert manifest["function"] == "scale" and manifest["job"] == "scale-train"
    assert manifest["startedAt"] <= manifest["finishedAt"]
    assert len(manifest["source"]["gitCommit"]) == 40  # the fixture lives in this git checkout
    assert f"run {outcome['runId']} with {{'scale': 4}}" in log  # the command's own output is in the log


def test_failures_publish_nothing(tmp_path: Path) -> None:
    root = tmp_path / "scale"
    code, outcome, _ = run_job(SCALE / "train.yaml", root.as_uri(), "--params", '{"exit_code": 3}')
    assert (code, outcome["state"]) == (3, "failed") and "exited with status 3" in outcome["message"]

    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = yaml.safe_load((SCALE / "train.yaml").read_text())
    manifest["spec"]["command"] = ["python", "-c", "pass"]
    (empty / "train.yaml").write_text(yaml.safe_dump(manifest))
    code, outcome, _ = run_job(empty / "train.yaml", root.as_uri())
    assert code == 1 and "wrote nothing to FNSERVE_OUTPUT_DIR" in outcome["message"]

    manifest["spec"]["command"] = ["no-such-program"]
    (empty / "train.yaml").write_text(yaml.safe_dump(manifest))
    code, outcome, _ = run_job(empty / "train.yaml", root.as_uri())
    assert code == 127 and "spec.command: cannot run 'no-such-program'" in outcome["message"]

    (empty / "train.yaml").write_text("kind: TrainingJob\nspec: {}\n")
    code, outcome, log = run_job(empty / "train.yaml", root.as_uri())
    assert code == 2 and "train.yaml: spec.function: required field is missing" in log and "Traceback" not in log
    assert runs_under(root) == []


def test_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "train.py").write_text((SCALE / "train.py").read_text())
    manifest = yaml.safe_load((SCALE / "train.yaml").read_text())
    manifest["spec"]["timeout"] = "2s"
    (folder / "train.yaml").write_text(yaml.safe_dump(manifest))
    pidfile = tmp_path / "pids"
    code, outcome, _ = run_job(folder / "train.yaml", (tmp_path / "scale").as_uri(), "--params",
                               json.dumps({"sleep": 60, "pidfile": str(pidfile)}), timeout=60)
    assert (code, outcome["state"]) == (124, "timed_out") and "timeout of 2 s" in outcome["message"]
    assert not any(alive(int(pid)) for pid in pidfile.read_text().split())
    assert runs_under(tmp_path / "scale") == []


def test_sigterm_cancels_without_publishing(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    scratch = tmp_path / "scratch"
    wrapper = subprocess.Popen([sys.executable, "-m", "fnserve.jobs.run", "--manifest", str(SCALE / "train.yaml"),
                                "--output", (tmp_path / "scale").as_uri(), "--scratch", str(scratch),
                                "--result", str(tmp_path / "result.json"),
                                "--params", json.dumps({"sleep": 60, "pidfile": str(pidfile)})],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, "the job to start")
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(30) == 143
    assert json.loads((tmp_path / "result.json").read_text())["state"] == "cancelled"
    assert not any(alive(int(pid)) for pid in pidfile.read_text().split())
    assert runs_under(tmp_path / "scale") == [] and not scratch.exists()


def test_with_the_json_log_format_the_wrapper_s_lines_are_json_naming_the_run(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNSERVE_LOG_FORMAT", "json")
    code, outcome, log = run_job(SCALE / "train.yaml", (tmp_path / "scale").as_uri())
    assert code == 0, log
    own = [json.loads(line) for line in log.splitlines() if line.startswith('{"time"')]
    assert own and all(line["component"] == "job" and line["run_id"] == outcome["runId"]
                       and line["job"] == "scale-train" for line in own)
    assert any(line["message"].startswith("succeeded: published") for line in own)
    assert "fnserve-job:" not in log
