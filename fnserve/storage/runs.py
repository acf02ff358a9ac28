"""Training runs in a store: how one is published, how complete ones are found, what a run records.

A run lives at ``<function root>/<run-id>/``. Publishing uploads every file first and ``_manifest.json``
last, so the manifest's presence is the commit point: a run without it does not exist — not for
``latest``, not for a deploy — whatever files a crashed or cancelled job left. The manifest lists each
file's size and sha256, which is what a download is checked against.

Run ids sort by time (``YYYYMMDD-HHMMSS-mmm-xxxx``, UTC, milliseconds, random suffix), so the newest
complete run is the greatest id that has a manifest, found by one listing.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnserve.storage.stores import ArtifactError, Store

MANIFEST_FILE = "_manifest.json"
RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-\d{3}-[0-9a-f]{4}$")
_CHUNK = 1 << 20


def new_run_id(now: float | None = None) -> str:
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{int(now * 1000) % 1000:03d}-{secrets.token_hex(2)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RunFile:
    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def describe_folder(folder: Path) -> list[RunFile]:
    """Every regular file below ``folder`` with its size and sha256. Links are refused: a run must be
    self-contained, and a link could smuggle in files from outside the output folder."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise ArtifactError(f"{relative}: is a symbolic link; write real files into FNSERVE_OUTPUT_DIR")
        if path.is_file():
            if relative == MANIFEST_FILE:
                raise ArtifactError(f"{MANIFEST_FILE} is written by fnserve; the job must not create it")
            files.append(RunFile(relative, path.stat().st_size, sha256_file(path)))
    return files


class PublishAborted(ArtifactError):
    """Publishing stopped before the commit point because the run was cancelled."""


def publish(store: Store, folder: Path, files: list[RunFile], record: dict[str, Any],
            abort: Callable[[], bool] = lambda: False) -> None:
    """Upload ``files`` from ``folder`` to ``store`` (rooted at the run), then the manifest, last.

    ``abort`` is asked before each file and before the manifest: a run cancelled while it uploads
    never commits. On any failure the uploaded files are removed again (best effort); without a
    manifest they would be ignored anyway.
    """
    uploaded: list[str] = []
    try:
        for file in files:
            if abort():
                raise PublishAborted("cancelled while publishing")
            store.upload(folder / file.path, file.path)
            uploaded.append(file.path)
        if abort():
            raise PublishAborted("cancelled while publishing")
        manifest = {**record, "files": [f.to_dict() for f in files]}
        store.write(MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode())
    except BaseException:
        try:
            store.delete(uploaded)
        except ArtifactError:
            pass
        raise


def read_manifest(store: Store) -> dict[str, Any] | None:
    """The run manifest at the root of ``store``, or None if it is not a (complete) run."""
    raw = store.read(MANIFEST_FILE)
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
        files = [RunFile(f["path"], int(f["size"]), str(f["sha256"])) for f in manifest["files"]]
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{store.uri}/{MANIFEST_FILE}: not a run manifest written by fnserve") from None
    manifest["files"] = files
    return manifest


def complete_runs(store: Store) -> list[str]:
    """Run ids under a function's root that have a manifest, oldest first."""
    suffix = "/" + MANIFEST_FILE
    return sorted(key[:-len(suffix)] for key in store.list() if key.endswith(suffix) and key.count("/") == 1)
