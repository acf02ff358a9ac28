"""Which GPUs the embedded backend may hand out, and who holds them.

The list comes from FNSERVE_GPUS ("0,1"; "none" for no GPUs; tests use it to simulate GPUs) or, when
unset, from ``nvidia-smi``. A replica of a function with ``resources.gpu: N`` holds N whole GPUs, sees
exactly those through CUDA_VISIBLE_DEVICES, and gives them back when it stops, so scaling to zero frees
them. Replicas without GPUs get an empty CUDA_VISIBLE_DEVICES and cannot touch one by accident.
Training jobs take GPUs from the same inventory; whoever waits for GPUs (replicas that could not start,
queued jobs) subscribes with on_freed() and is told whenever some are given back.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable

log = logging.getLogger("fnserve.local")


def discover(setting: str | None) -> list[str]:
    """GPU ids from the setting, else from nvidia-smi, else none."""
    if setting is not None:
        value = setting.strip()
        if value.lower() in ("", "none"):
            return []
        ids = [part.strip() for part in value.split(",") if part.strip()]
        if len(set(ids)) != len(ids):
            raise SystemExit(f"fnserve: FNSERVE_GPUS={setting!r} names a GPU twice")
        return ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s); no GPUs will be handed out", exc)
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class GpuInventory:
    def __init__(self, ids: list[str]) -> None:
        self.ids = list(ids)
        self._holder: dict[str, str] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_freed(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every give_back() that freed a GPU, in subscription order."""
        self._listeners.append(listener)

    @property
    def free(self) -> list[str]:
        return [gpu for gpu in self.ids if gpu not in self._holder]

    def take(self, count: int, holder: str) -> list[str] | None:
        """``count`` free GPUs for ``holder``, or None (and nothing taken) if there are not enough."""
        free = self.free
        if count > len(free):
            return None
        chosen = free[:count]
        for gpu in chosen:
            self._holder[gpu] = holder
        return chosen

    def give_back(self, holder: str) -> None:
        freed = [g for g, h in self._holder.items() if h == holder]
        for gpu in freed:
            del self._holder[gpu]
        if freed:
            for listener in list(self._listeners):
                listener()

    def held(self) -> dict[str, str]:
        return dict(self._holder)
