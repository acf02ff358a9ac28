"""Where a revision's model comes from: resolving ``spec.model.uri`` to a local artifact folder.

Relative paths are relative to the manifest's folder, so a function folder can be moved or cloned as a
whole. A model folder must exist and hold files at deploy time: an invalid deploy changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse


class ArtifactError(Exception):
    """The model URI does not lead to a usable artifact folder; the message says what to fix."""


def resolve_model_dir(uri: str, source_dir: Path) -> Path:
    """A local artifact folder for ``uri`` (relative path or file:// URI)."""
    if uri.startswith("s3://"):
        raise ArtifactError(f"{uri}: s3:// models are not supported by this version of the local backend "
                            "yet; use a path or file:// URI")
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
