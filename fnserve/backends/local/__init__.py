"""The embedded backend: replicas are KServe ModelServer processes on this machine's loopback, training
jobs are subprocesses through the job wrapper; both take GPUs from one inventory."""

from __future__ import annotations

import logging

from fnserve.backends.local.backend import LocalBackend
from fnserve.backends.local.gpus import GpuInventory, discover
from fnserve.backends.local.jobs import LocalJobs
from fnserve.settings import Settings
from fnserve.state import StateStore

__all__ = ["LocalBackend", "LocalJobs", "create"]

log = logging.getLogger("fnserve.local")


def create(settings: Settings, state: StateStore) -> tuple[LocalBackend, LocalJobs]:
    """Serving and Training on this machine, sharing the GPU inventory. Built in this order, so GPUs that
    are given back go to waiting replicas before queued jobs."""
    gpus = GpuInventory(discover(settings.gpus))
    log.info("GPUs to hand out: %s", ", ".join(gpus.ids) or "none")
    return LocalBackend(settings, gpus), LocalJobs(settings, state, gpus)
