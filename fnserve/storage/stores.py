"""Object stores under one small interface: a local folder (file://) or an S3 prefix (s3://, via boto3).

A store is rooted at a URI and speaks in '/'-separated keys relative to that root, so the code that
publishes and fetches runs (runs.py, models.py) is written once for both. Every failure becomes an
ArtifactError whose message names the URI and what went wrong, never a botocore traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote, urlparse


class ArtifactError(Exception):
    """An artifact location that cannot be used as asked; the message says what to fix."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    version: str
    """What changes when the object does: the ETag on S3, size and mtime for a file."""


@dataclass(frozen=True)
class S3Options:
    """How to reach S3; unset fields fall back to boto3's own chain (env, profile, instance role)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    part_size: int = 8 * 2**20
    """Files larger than this are uploaded in parts of this size (S3's minimum part is 5 MiB)."""


class Store(Protocol):
    uri: str

    def list(self) -> dict[str, ObjectInfo]:
        """Every object below the root, recursively, by key."""

    def read(self, key: str) -> bytes | None:
        """An object's bytes, or None when it does not exist."""

    def write(self, key: str, data: bytes) -> None:
        """Create or replace an object; readers see the old or the new one, never a part."""

    def upload(self, path: Path, key: str) -> None: ...

    def download(self, key: str, path: Path) -> None: ...

    def delete(self, keys: Iterable[str]) -> None: ...

    def child(self, name: str) -> Store:
        """The store rooted one level further down."""


def safe_key(key: str) -> PurePosixPath:
    """A key as a relative path, refusing ones that would escape the folder it is written into."""
    relative = PurePosixPath(key)
    if not key or relative.is_absolute() or ".." in relative.parts:
        raise ArtifactError(f"refusing object key {key!r}: it leads outside the artifact folder")
    return relative


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*safe_key(key).parts)

    def list(self) -> dict[str, ObjectInfo]:
        if not self.root.is_dir():
            return {}
        found = {}
        for path in self.root.rglob("*"):
            if path.is_file() and not any(p.startswith(".tmp-") for p in path.parts):
                stat = path.stat()
                found[path.relative_to(self.root).as_posix()] = ObjectInfo(stat.st_size,
                                                                           f"{stat.st_size}-{stat.st_mtime_ns}")
        return found

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, key: str, data: bytes) -> None:
        with self._staged(key) as staging:
            staging.write_bytes(data)

    def upload(self, path: Path, key: str) -> None:
        with self._staged(key) as staging:
            shutil.copyfile(path, staging)

    @contextlib.contextmanager
    def _staged(self, key: str) -> Iterator[Path]:
        """Write beside the target, then rename: an object appears whole or not at all."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
            os.close(handle)
        except OSError as exc:
            raise ArtifactError(f"{self.uri}: cannot write {key} ({exc.strerror})") from None
        staging = Path(name)
        try:
            yield staging
            os.replace(staging, target)
        except OSError as exc:
            raise ArtifactError(f"{self.uri}: cannot write {key} ({exc.strerror})") from None
        finally:
            staging.unlink(missing_ok=True)

    def download(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except OSError as exc:
            raise ArtifactError(f"{self.uri}: cannot read {key} ({exc.strerror})") from None

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), reverse=True) if self.root.is_dir() \
                else []:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only empty ones go
        with contextlib.suppress(OSError):
            self.root.rmdir()

    def child(self, name: str) -> FileStore:
        return FileStore(self._path(name))


class S3Store:
    def __init__(self, bucket: str, prefix: str, options: S3Options, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.options = options
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.options)
        return self._client

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise ArtifactError(f"{self.uri}: bucket {self.bucket!r} does not exist") from None
            raise ArtifactError(f"{self.uri}: S3 refused to {action} ({code or exc})") from None
        except BotoCoreError as exc:
            raise ArtifactError(f"{self.uri}: cannot {action} ({exc})") from None

    def list(self) -> dict[str, ObjectInfo]:
        with self._errors("list objects"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            return {o["Key"][len(self.prefix):]: ObjectInfo(o["Size"], o.get("ETag", ""))
                    for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")}

    def read(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with self._errors(f"read {key}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def write(self, key: str, data: bytes) -> None:
        with self._errors(f"write {key}"):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def upload(self, path: Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        size = self.options.part_size
        config = TransferConfig(multipart_threshold=size, multipart_chunksize=size)
        with self._errors(f"upload {key}"):
            self.client.upload_file(str(path), self.bucket, self.prefix + key, Config=config)

    def download(self, key: str, path: Path) -> None:
        with self._errors(f"download {key}"):
            self.client.download_file(self.bucket, self.prefix + key, str(path))

    def delete(self, keys: Iterable[str]) -> None:
        batch = [{"Key": self.prefix + key} for key in keys]
        with self._errors("delete objects"):
            for start in range(0, len(batch), 1000):  # DeleteObjects takes at most 1000 keys
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch[start:start + 1000]})

    def child(self, name: str) -> S3Store:
        return S3Store(self.bucket, self.prefix + safe_key(name).as_posix(), self.options, self._client)


def s3_client(options: S3Options) -> Any:
    """A boto3 S3 client with bounded timeouts and retries (botocore's standard mode backs off)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", endpoint_url=options.endpoint_url or None, region_name=options.region or None,
                        aws_access_key_id=options.access_key_id or None,
                        aws_secret_access_key=options.secret_access_key or None, config=config)


def open_store(uri: str, options: S3Options | None = None) -> FileStore | S3Store:
    """The store rooted at an absolute ``file://`` or ``s3://`` URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, options or S3Options())
    if parsed.scheme == "file":
        return FileStore(Path(unquote(parsed.netloc + parsed.path)))
    raise ArtifactError(f"{uri}: expected a file:// or s3:// URI")
