"""Replica log files on one machine: read, followed, rotated, and removed with their revision.

Each replica writes ``<state>/logs/<function>/<replica id>.log`` through its own stdout (an O_APPEND file
descriptor the process holds), so rotation is logrotate's *copytruncate*: the file is copied to ``.log.1``
and truncated in place, and the replica's next write lands at the new end. A line written between the
copy and the truncation can be lost; nothing else is, and the replica needs no signal. A replica id
starts with its revision's id (``name-00003-ab12``), so files of revisions no longer serving, and the
folders of removed functions, are recognised and deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from pathlib import Path

from fnserve.backends.local.replica import tail_lines

FOLLOW_POLL_SECONDS = 0.25


def revision_of(log_file: Path) -> str:
    """The revision id in a replica log's name (``name-00003-ab12.log`` → ``name-00003``)."""
    return log_file.name.split(".log", 1)[0].rsplit("-", 1)[0]


def newest(folder: Path, count: int = 3) -> list[Path]:
    """The ``count`` most recently written replica logs of a function, oldest first."""
    files = []
    for path in folder.glob("*.log"):
        try:
            files.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # removed since it was listed
            continue
    return [path for _, path in sorted(files)[-count:]]


def read_tails(folder: Path, tail: int) -> str:
    """The end of the newest replica logs, each under a ``==> replica <==`` head as tail(1) writes them."""
    return "\n".join(_section(path, tail_lines(path, tail)) for path in newest(folder))


def _section(path: Path, lines: list[str]) -> str:
    return f"==> {path.stem} <==\n" + "\n".join(lines)


async def follow(folder: Path, tail: int, still_there: Callable[[], bool]) -> AsyncIterator[bytes]:
    """The end of the logs, then every complete line any replica of the function writes, as it comes
    (new replicas included), until the function is removed or the reader leaves."""
    start, offsets = await asyncio.to_thread(_start_following, folder, tail)
    if start:
        yield (start + "\n").encode()
    shown: Path | None = None
    while still_there():
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
        for path in newest(folder, 1000):
            chunk, offsets[path] = await asyncio.to_thread(_complete_lines, path, offsets.get(path, 0))
            if chunk:
                if path != shown:
                    chunk = f"==> {path.stem} <==\n".encode() + chunk
                    shown = path
                yield chunk


def _start_following(folder: Path, tail: int) -> tuple[str, dict[Path, int]]:
    """The tails as read_tails shows them, and where following each log goes on: just after the last whole
    line shown, so that a line written meanwhile is shown once, by the follower (the size taken apart from
    the read would skip it)."""
    offsets = {path: _size(path) for path in newest(folder, 1000)}
    parts = []
    for path in newest(folder):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        end = data.rfind(b"\n") + 1
        offsets[path] = end
        parts.append(_section(path, data[:end].decode("utf-8", errors="replace").splitlines()[-tail:]))
    return "\n".join(parts), offsets


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _complete_lines(path: Path, offset: int) -> tuple[bytes, int]:
    """Whole lines written after ``offset`` and the new offset; from the start again after a rotation."""
    size = _size(path)
    if size < offset:  # truncated by a rotation
        offset = 0
    if size == offset:
        return b"", offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(size - offset)
    end = data.rfind(b"\n") + 1
    return data[:end], offset + end


KEEP_ENDED = 5
"""Logs of ended replicas kept per serving revision (a scale-to-zero function starts one per cold start)."""
def tidy(root: Path, serving: Mapping[str, Collection[str]], live: Collection[Path], max_bytes: int,
         grace: float, now: float | None = None) -> list[Path]:
    """Remove what is no longer wanted and return the logs due for rotation (past ``max_bytes``; the copy is
    the caller's to run off the event loop). Removed, once unwritten for ``grace`` seconds: the logs of
    revisions that no longer serve (``serving``: function → revision ids) and the folders of functions
    that are gone; at once: the logs of ended replicas of a serving revision beyond its newest KEEP_ENDED.
    A log a replica still writes (``live``: a draining one too) is never removed."""
    now = time.time() if now is None else now
    due: list[Path] = []
    if not root.is_dir():
        return due
    for folder in root.iterdir():
        if not folder.is_dir():
            continue  # the fork servers' logs
        revisions = serving.get(folder.name, ())
        ended: list[tuple[float, Path]] = []  # the serving revisions' replicas that no longer write
        for path in folder.glob("*.log*"):
            log = path.with_name(path.name.split(".log", 1)[0] + ".log")  # a rotated part's log
            if log in live:
                if path == log and _size(path) > max_bytes:
                    due.append(path)
                continue
            try:
                written = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if revision_of(path) not in revisions:
                if now - written > grace:
                    path.unlink(missing_ok=True)
            elif path == log:
                ended.append((written, path))
        newest: dict[str, int] = {}
        for _, path in sorted(ended, reverse=True):
            kept = newest[revision_of(path)] = newest.get(revision_of(path), 0) + 1
            if kept > KEEP_ENDED:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".1").unlink(missing_ok=True)
        if folder.name not in serving:
            with contextlib.suppress(OSError):  # not empty yet: within its grace
                folder.rmdir()
    return due


def rotate_all(paths: list[Path]) -> None:
    for path in paths:
        rotate(path)


def rotate(path: Path) -> None:
    """copytruncate: the file's content to ``<name>.1`` (replacing the previous one), the file emptied."""
    shutil.copyfile(path, path.with_name(path.name + ".1"))
    with path.open("r+b") as handle:
        handle.truncate(0)
