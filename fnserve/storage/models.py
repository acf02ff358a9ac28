"""Where a revision's model comes from: ``spec.model.uri`` → a pinned URI and a local, verified folder.

``artifacts://<function>/<run>`` names a run in the platform's artifact store, so one manifest works
from laptop (a folder in the state dir) to cluster (a bucket). Relative paths are relative to the
manifest's folder. Any URI ending in ``/latest`` is pinned to the newest complete run below it when the
revision is made, and the revision records the concrete run, never "latest".

A run (a folder with ``_manifest.json``) is downloaded once into a cache keyed by its run id, and every
file is checked against the size and sha256 its manifest lists: a changed artifact is refused. A plain
s3:// prefix (no manifest) is cached by its listing's keys, sizes and ETags; a plain local folder is
snapshotted by the caller. A cache folder becomes visible only by an atomic rename once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnserve.storage.runs import MANIFEST_FILE, complete_runs, read_manifest, sha256_file
from fnserve.storage.stores import ArtifactError, FileStore, S3Options, Store, open_store, safe_key

LATEST = "latest"


@dataclass(frozen=True)
class ModelSource:
    """A model URI made concrete: what the revision records, and the local folder replicas load."""

    uri: str
    """The URI as pinned: ``latest`` replaced by the run it stood for."""
    local_dir: Path
    frozen: bool
    """False for a plain local folder, which can still change and must be snapshotted; downloads and
    verified runs in the cache are frozen already."""
    run: dict[str, Any] | None = None
    """The run manifest when the folder is a published run."""


class NoCompleteRun(ArtifactError):
    """``…/latest`` names a function that has no published run yet (its training job has not run)."""


def location(uri: str, source_dir: Path, artifact_root: str) -> str:
    """The absolute file:// or s3:// URI a model URI stands for."""
    if uri.startswith("artifacts://"):
        return artifact_root.rstrip("/") + "/" + uri[len("artifacts://"):].strip("/")
    if "://" in uri:
        return uri.rstrip("/")
    return (source_dir / uri).resolve().as_uri()


def pin_latest(uri: str, source_dir: Path, artifact_root: str, options: S3Options) -> str:
    """``…/latest`` → ``…/<newest complete run id>``; any other URI unchanged."""
    parent, _, last = uri.rstrip("/").rpartition("/")
    if last != LATEST or not parent or parent.endswith(":/"):
        return uri
    store = open_store(location(parent, source_dir, artifact_root), options)
    runs = complete_runs(store)
    if not runs:
        raise NoCompleteRun(f"{uri}: no complete run under {store.uri} yet (train one first: "
                            f"fnserve train <train.yaml>)")
    return f"{parent}/{runs[-1]}"


def pin_model(uri: str, source_dir: Path, artifact_root: str, options: S3Options | None = None) -> str:
    """Pin ``uri`` and check that it names something in object storage, without downloading it: for
    backends whose replicas fetch the model themselves (KServe's storage initializer in a cluster)."""
    options = options or S3Options()
    pinned = pin_latest(uri, source_dir, artifact_root, options)
    store = open_store(location(pinned, source_dir, artifact_root), options)
    if isinstance(store, FileStore):
        raise ArtifactError(f"{uri}: a folder on this machine cannot reach a cluster; use artifacts://<function>/"
                            f"<run> or s3://")
    if read_manifest(store) is None and not store.list():
        raise ArtifactError(f"{uri}: no objects under this prefix")
    return pinned


def resolve_model(uri: str, source_dir: Path, cache_dir: Path, artifact_root: str,
                  options: S3Options | None = None) -> ModelSource:
    """Pin, fetch and verify the model ``uri`` names; blocking: call it from a worker thread."""
    options = options or S3Options()
    pinned = pin_latest(uri, source_dir, artifact_root, options)
    store = open_store(location(pinned, source_dir, artifact_root), options)
    run = read_manifest(store)
    if run is not None:
        key = ["run", store.uri, run.get("runId"), [f.to_dict() for f in run["files"]]]
        return ModelSource(pinned, _cached(cache_dir, key, lambda staging: _fetch_run(store, run, staging)), True,
                           run)
    if isinstance(store, FileStore):
        return ModelSource(pinned, _local_folder(uri, store.root), False)
    listing = store.list()
    if not listing:
        raise ArtifactError(f"{uri}: no objects under this prefix")
    key = ["objects", store.uri, sorted((k, o.size, o.version) for k, o in listing.items())]
    return ModelSource(pinned, _cached(cache_dir, key, lambda staging: _fetch_all(store, listing, staging)), True)


def _local_folder(uri: str, path: Path) -> Path:
    if not path.is_dir():
        raise ArtifactError(f"{uri}: no model folder at {path}" + (" (train the model first)" if not path.exists()
                                                                    else ""))
    if not any(path.iterdir()):
        raise ArtifactError(f"{uri}: model folder {path} is empty")
    return path


def _fetch_all(store: Store, listing: dict[str, Any], staging: Path) -> None:
    for key in sorted(listing):
        destination = staging.joinpath(*safe_key(key).parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        store.download(key, destination)


def _fetch_run(store: Store, run: dict[str, Any], staging: Path) -> None:
    """Download a run's listed files and check each against its manifest before anyone can see them."""
    for file in run["files"]:
        destination = staging.joinpath(*safe_key(file.path).parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        store.download(file.path, destination)
        size, digest = destination.stat().st_size, sha256_file(destination)
        if size != file.size or digest != file.sha256:
            raise ArtifactError(f"{store.uri}/{file.path}: does not match the run's {MANIFEST_FILE} (sha256 "
                                f"{digest[:12]}…, {size} bytes; published as {file.sha256[:12]}…, {file.size} "
                                f"bytes): the artifact changed after it was published; refusing it")
    (staging / MANIFEST_FILE).write_text(json.dumps({**run, "files": [f.to_dict() for f in run["files"]]},
                                                    indent=2))


UPLOAD_LIMIT = 256 * 2**20


def unpack_upload(files: Any, cache_dir: Path) -> Path:
    """A function folder sent through the API ({relative path: base64}) as a folder on this machine,
    content-addressed like every other cache folder. Paths that would leave the folder are refused."""
    import base64
    import binascii

    if not isinstance(files, dict) or not files:
        raise ArtifactError("files must be a non-empty object of relative path → base64 content")
    decoded: dict[str, bytes] = {}
    for path, content in files.items():
        safe_key(str(path))
        try:
            decoded[str(path)] = base64.b64decode(str(content), validate=True)
        except (binascii.Error, ValueError):
            raise ArtifactError(f"files[{path!r}]: not base64") from None
    if sum(map(len, decoded.values())) > UPLOAD_LIMIT:
        raise ArtifactError(f"the uploaded folder is larger than {UPLOAD_LIMIT // 2**20} MiB")

    def write(staging: Path) -> None:
        for path, content in decoded.items():
            target = staging.joinpath(*safe_key(path).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)

    key = ["upload", sorted((p, hashlib.sha256(c).hexdigest()) for p, c in decoded.items())]
    return _cached(cache_dir, key, write)


_SNAPSHOT_SKIP = {"__pycache__", ".git", ".ipynb_checkpoints"}


def snapshot_dir(folder: Path, cache_dir: Path, exclude: Path | None = None) -> Path:
    """An immutable copy of ``folder`` under ``cache_dir``, keyed by every file's path, size and mtime.

    A revision must not change after it is deployed: a replica started an hour later (scale from zero)
    has to load the same code and model as the first. Copies are reused while nothing changed, and a
    copy becomes visible only once complete (staging folder + rename). ``exclude`` (a subfolder, e.g. the
    model inside the function's folder) is left out.
    """
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part in _SNAPSHOT_SKIP or part.startswith(".train-") for part in relative.parts):
            continue
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        if path.is_file():
            stat = path.stat()
            files.append((relative.as_posix(), stat.st_size, stat.st_mtime_ns))

    def copy(staging: Path) -> None:
        for relative, _, _ in files:
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / relative, destination)

    return _cached(cache_dir, [str(folder), files], copy)


def _cached(cache_dir: Path, key: Any, fill: Callable[[Path], None]) -> Path:
    """The folder cached under a digest of ``key``: made once by ``fill(staging)``, published by a rename,
    so a half-made folder is never visible and concurrent makers of the same folder agree."""
    target = cache_dir / hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
    try:
        fill(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another deploy finished the same folder first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
