"""Reading a function's folder for the renderer, and rendering a manifest path (``fnserve render``,
``make render``). The only part of the cluster rendering that touches the file system."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fnserve.backends.knative.render import ClusterConfig, cloud_event, render_function, render_job, render_jobsink
from fnserve.manifest import Function, load_manifest, manifest_path

EXAMPLE_RUN_ID = "00000000-000000-000-0000"
"""The run id example Jobs are rendered with (a real run gets a fresh one)."""


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by relative path (the renderer decides what goes into a ConfigMap)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def render_path(path: Path, config: ClusterConfig, *, jobsink: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects for one manifest (a function folder, function.yaml or train.yaml), and notes for the user."""
    file = manifest_path(path)
    manifest = load_manifest(file)
    files = folder_files(file.parent)
    notes = []
    if isinstance(manifest, Function):
        if manifest.spec.model.uri.rstrip("/").endswith("/latest"):
            notes.append(f"{file}: spec.model.uri ends in 'latest': fnserve's router pins it to a run when it deploys; "
                         f"for kubectl apply, name a run")
        return render_function(manifest, files, config), notes
    if jobsink:
        event = cloud_event(manifest, config, EXAMPLE_RUN_ID)
        notes.append(f"{file}: start a run by POSTing a CloudEvent like this to the JobSink's address: "
                     f"{event}")
        return render_jobsink(manifest, files, config), notes
    return render_job(manifest, files, config, EXAMPLE_RUN_ID), notes
