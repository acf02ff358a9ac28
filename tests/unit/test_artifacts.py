"""Runs in a file:// store: publishing order, what counts as a run, latest, and verified fetches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fnserve.storage import (
    MANIFEST_FILE,
    ArtifactError,
    FileStore,
    complete_runs,
    describe_folder,
    new_run_id,
    publish,
    resolve_model,
)
from fnserve.storage.runs import RUN_ID_RE, PublishAborted


def output(tmp_path: Path, **files: bytes) -> Path:
    folder = tmp_path / "output"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def publish_run(root: FileStore, folder: Path, run_id: str) -> None:
    publish(root.child(run_id), folder, describe_folder(folder), {"runId": run_id, "metrics": {}})


def test_run_ids_sort_by_time() -> None:
    ids = [new_run_id(1_700_000_000.0), new_run_id(1_700_000_000.5), new_run_id(1_700_000_061.0)]
    assert all(RUN_ID_RE.match(i) for i in ids) and sorted(ids) == ids
    assert ids[0].startswith("20231114-221320-000-")


def test_only_runs_with_a_manifest_exist_and_latest_is_the_newest_of_them(tmp_path: Path) -> None:
    root = FileStore(tmp_path / "artifacts" / "fn")
    folder = output(tmp_path, **{"model.onnx": b"one"})
    publish_run(root, folder, "20260101-000000-000-aaaa")
    # a newer run that never committed (a crashed job's files, no manifest) is invisible
    (root.root / "20260102-000000-000-bbbb").mkdir()
    (root.root / "20260102-000000-000-bbbb" / "model.onnx").write_bytes(b"half")
    assert complete_runs(root) == ["20260101-000000-000-aaaa"]

    model = resolve_model("artifacts://fn/latest", tmp_path, tmp_path / "cache", (tmp_path / "artifacts").as_uri())
    assert model.uri == "artifacts://fn/20260101-000000-000-aaaa" and model.frozen
    assert (model.local_dir / "model.onnx").read_bytes() == b"one"
    assert json.loads((model.local_dir / MANIFEST_FILE).read_text())["runId"] == "20260101-000000-000-aaaa"


def test_manifest_lists_sizes_and_digests_and_is_written_last(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "run")
    folder = output(tmp_path, **{"a.bin": b"x" * 10})
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_bytes(b"hello")
    written: list[str] = []
    original = store.write
    store.upload = lambda path, key: written.append(key) or FileStore.upload(store, path, key)  # type: ignore[method-assign]
    store.write = lambda key, data: written.append(key) or original(key, data)  # type: ignore[method-assign]
    publish(store, folder, describe_folder(folder), {"runId": "r"})
    assert written == ["a.bin", "sub/b.txt", MANIFEST_FILE]
    files = json.loads((tmp_path / "run" / MANIFEST_FILE).read_text())["files"]
    assert files[1] == {"path": "sub/b.txt", "size": 5,
                        "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}


def test_a_cancelled_or_failed_publish_leaves_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "fn" / "run")
    folder = output(tmp_path, **{"a": b"1", "b": b"2"})
    calls = iter([False, True])
    with pytest.raises(PublishAborted):
        publish(store, folder, describe_folder(folder), {}, abort=lambda: next(calls))
    assert not (tmp_path / "fn" / "run").exists()

    (folder / "link").symlink_to("/etc/hostname")
    with pytest.raises(ArtifactError, match="link: is a symbolic link"):
        describe_folder(folder)


def test_a_changed_file_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    root = FileStore(tmp_path / "artifacts" / "fn")
    publish_run(root, output(tmp_path, **{"model.onnx": b"weights"}), "20260101-000000-000-aaaa")
    (root.root / "20260101-000000-000-aaaa" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="model.onnx: does not match the run's _manifest.json .*refusing it"):
        resolve_model("artifacts://fn/20260101-000000-000-aaaa", tmp_path, tmp_path / "cache",
                      (tmp_path / "artifacts").as_uri())
    assert os.listdir(tmp_path / "cache") == []


def test_latest_without_any_run_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"artifacts://fn/latest: no complete run under file://.*/fn yet "
                                            r"\(train one first"):
        resolve_model("artifacts://fn/latest", tmp_path, tmp_path / "cache", (tmp_path / "artifacts").as_uri())
