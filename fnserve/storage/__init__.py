"""Artifact storage: stores (file://, s3://), published training runs, and model folders for revisions."""

from fnserve.storage.models import (
           LATEST,
           ModelSource,
           NoCompleteRun,
           location,
           pin_latest,
           pin_model,
           resolve_model,
           snapshot_dir,
)
from fnserve.storage.runs import (
           MANIFEST_FILE,
           RunFile,
           complete_runs,
           describe_folder,
           new_run_id,
           publish,
           read_manifest,
)
from fnserve.storage.stores import ArtifactError, FileStore, ObjectInfo, S3Options, S3Store, Store, open_store

__all__ = ["LATEST", "MANIFEST_FILE", "ArtifactError", "FileStore", "ModelSource", "NoCompleteRun", "ObjectInfo",
           "RunFile",
           "S3Options", "S3Store", "Store", "complete_runs", "describe_folder", "location", "new_run_id",
           "open_store", "pin_latest", "pin_model", "publish", "read_manifest", "resolve_model", "snapshot_dir"]
