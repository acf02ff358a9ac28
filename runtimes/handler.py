"""The optional per-function handler: pre- and post-processing around the model.

A function's ``spec.handler`` names ``module:Class`` in its own folder. The class needs none of the
methods below; whatever it leaves out behaves as the identity. Handlers see named numpy tensors only,
never HTTP or protocol objects, so the same handler serves V1, V2, batching and every backend.
A handler signals bad input by raising ``ValueError`` (the client gets a 400 with its message).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from runtimes.tensors import Tensors, TensorSpec


class Handler:
    """Base class for handlers; subclassing it is optional and documents the hooks."""

    #: The function's public signature, if it differs from the model's (e.g. text in, labels out).
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None

    def load(self, model_dir: Path) -> None:
        """Read what the handler needs from the artifact folder (labels, vocabularies)."""

    def preprocess(self, inputs: Tensors) -> Tensors:
        """Public inputs → the model's inputs."""
        return inputs

    def postprocess(self, outputs: Tensors, inputs: Tensors) -> Tensors:
        """The model's outputs → public outputs; ``inputs`` are the public inputs of the same batch."""
        return outputs


class HandlerError(Exception):
    """The handler named in the manifest cannot be loaded; the message says why, for the logs."""


class _Adapter(Handler):
    """Gives a duck-typed user class the full Handler interface."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.inputs = getattr(target, "inputs", None)
        self.outputs = getattr(target, "outputs", None)

    def load(self, model_dir: Path) -> None:
        if hasattr(self.target, "load"):
            self.target.load(model_dir)

    def preprocess(self, inputs: Tensors) -> Tensors:
        return self.target.preprocess(inputs) if hasattr(self.target, "preprocess") else inputs

    def postprocess(self, outputs: Tensors, inputs: Tensors) -> Tensors:
        if hasattr(self.target, "postprocess"):
            return self.target.postprocess(outputs, inputs)
        return outputs

    def __getattr__(self, name: str) -> Any:
        """Hooks only some runtimes call (torch's ``build_model``) come from the user's class as they are."""
        return getattr(self.target, name)


def load_handler(reference: str | None, function_dir: Path) -> Handler:
    """Import ``module:Class`` from the function's folder and instantiate it."""
    if reference is None:
        return Handler()
    module_name, _, class_name = reference.partition(":")
    folder = str(function_dir.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"handler {reference!r}: cannot import {module_name!r} from {folder}: {exc}") \
            from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise HandlerError(f"handler {reference!r}: {module_name} has no class {class_name!r}")
    instance = cls()
    return instance if isinstance(instance, Handler) else _Adapter(instance)
