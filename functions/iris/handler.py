"""Iris handler: four measurements (cm) in, the species and every class's probability out.

The exported model already standardises its input and applies the softmax (see train.py), so the handler
only guards the input and names the winning class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtimes.handler import Handler
from runtimes.tensors import Tensors, TensorSpec

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]  # the input's columns, as in train.py


class IrisHandler(Handler):
    inputs = [TensorSpec("features", "FP32", (-1, 4))]
    outputs = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3))]

    def load(self, model_dir: Path) -> None:
        """labels.json lists the species in the model's output order (written by train.py)."""
        self.labels: list[str] = json.loads((model_dir / "labels.json").read_text())

    def preprocess(self, inputs: Tensors) -> Tensors:
        """Refuse what the model would happily turn into a confident answer: NaN, inf, negative lengths."""
        features = inputs["features"]
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1) | (features < 0).any(axis=1))
        if bad.size:
            row = int(bad[0])
            column = int(np.flatnonzero(~np.isfinite(features[row]) | (features[row] < 0))[0])
            raise ValueError(f"instance {row}: {FEATURES[column]} is {features[row, column]:g}; "
                             f"measurements must be finite and ≥ 0 (cm)")
        return {"features": features}

    def postprocess(self, outputs: Tensors, inputs: Tensors) -> Tensors:
        probabilities = outputs["probabilities"]
        return {"label": np.array([self.labels[i] for i in probabilities.argmax(axis=1)], dtype=object),
                "probabilities": probabilities}
