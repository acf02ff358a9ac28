"""Where a revision's model comes from: ``spec.model.uri`` → a local artifact folder.

Relative paths are relative to the manifest's folder, so a function folder can be moved or cloned as a
whole. ``s3://`` prefixes are downloaded with boto3 (any S3 API: AWS, MinIO, Ceph) into a cache folder
named after the listing's keys, sizes and ETags: the same artifact is fetched once, a changed one gets
a new folder, and a download only becomes visible by an atomic rename once complete. A model folder
must exist and hold files at deploy time: an invalid deploy changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse


class ArtifactError(Exception):
    """The model URI does not lead to a usable artifact folder; the message says what to fix."""


def resolve_model_dir(uri: str, source_dir: Path, cache_dir: Path, s3_endpoint_url: str | None = None) -> Path:
    """The local artifact folder ``uri`` names (not yet snapshotted); blocking: call it from a worker thread."""
    if uri.startswith("s3://"):
        return fetch_s3(uri, cache_dir, s3_endpoint_url)
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        path = Path(unquote(parsed.netloc + parsed.path))
    else:
        path = source_dir / uri
    path = path.resolve()
    if not path.is_dir():
        raise ArtifactError(f"{uri}: no model folder at {path}"
                            + (" (train the model first)" if not path.exists() else ""))
    if not any(path.iterdir()):
        raise ArtifactError(f"{uri}: model folder {path} is empty")
    return path


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


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client; credentials and region come from boto3's usual chain (env, profile, role)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, (prefix.rstrip("/") + "/") if prefix else ""


def _list(client: Any, uri: str, bucket: str, prefix: str) -> list[dict[str, Any]]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        objects = [o for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise ArtifactError(f"{uri}: bucket {bucket!r} does not exist") from None
        raise ArtifactError(f"{uri}: S3 refused the listing ({code or exc})") from None
    except BotoCoreError as exc:
        raise ArtifactError(f"{uri}: cannot list objects ({exc})") from None
    if not objects:
        raise ArtifactError(f"{uri}: no objects under this prefix")
    return objects


def fetch_s3(uri: str, cache_dir: Path, endpoint_url: str | None = None) -> Path:
    """Download every object under an s3:// prefix into the cache; returns the local folder."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = _split(uri)
    client = s3_client(endpoint_url)
    objects = _list(client, uri, bucket, prefix)
    listing = sorted((o["Key"], o["Size"], o.get("ETag", "")) for o in objects)

    def download(staging: Path) -> None:
        for key, _, _ in listing:
            relative = PurePosixPath(key[len(prefix):])
            if relative.is_absolute() or ".." in relative.parts:
                raise ArtifactError(f"{uri}: refusing object key {key!r} outside the prefix")
            destination = staging.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(destination))

    try:
        return _cached(cache_dir, [bucket, listing], download)
    except (ClientError, BotoCoreError) as exc:
        raise ArtifactError(f"{uri}: download failed ({exc})") from None
