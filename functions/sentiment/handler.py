"""Sentiment handler: sentences in, ``{"label", "score"}`` out, around the ONNX classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from featurize import FeatureConfig, featurize

from runtimes.handler import Handler
from runtimes.tensors import Tensors, TensorSpec


class SentimentHandler(Handler):
    inputs = [TensorSpec("text", "BYTES", (-1,))]
    outputs = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1,))]

    def load(self, model_dir: Path) -> None:
        self.labels = json.loads((model_dir / "labels.json").read_text())
        self.config = FeatureConfig(**json.loads((model_dir / "featurizer.json").read_text()))

    def preprocess(self, inputs: Tensors) -> Tensors:
        texts = inputs["text"].tolist()
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("every instance must be a non-empty string")
        return {"features": featurize(texts, self.config)}

    def postprocess(self, outputs: Tensors, inputs: Tensors) -> Tensors:
        logits = outputs["logits"]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        best = probabilities.argmax(axis=1)
        return {"label": np.array([self.labels[i] for i in best], dtype=object),
                "score": probabilities[np.arange(len(best)), best].astype(np.float32)}
