"""Train the example sentiment classifier and export it as ONNX.

Run as a training job (train.yaml): `fnserve train functions/sentiment` — the job wrapper hands this
script an empty FNSERVE_OUTPUT_DIR and its parameters as FNSERVE_PARAMS (epochs, hidden, holdout,
seed), and publishes the folder as a run only if the script exits 0. By hand:
`python train.py --out some/folder`.

Hashed n-gram features (featurize.py) → a small MLP in PyTorch, trained in seconds on a CPU; accuracy
and F1 are measured on a held-out split; the output gets model.onnx, labels.json, featurizer.json and
metrics.json (which the wrapper also copies into the run's manifest).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from featurize import FeatureConfig, featurize

HERE = Path(__file__).resolve().parent
LABELS = ["negative", "positive"]


def read_dataset(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if row.get("label") not in LABELS or not (row.get("text") or "").strip():
                raise SystemExit(f"{path}:{line}: expected text and a label in {LABELS}")
            texts.append(row["text"])
            labels.append(LABELS.index(row["label"]))
    if len(set(labels)) < 2:
        raise SystemExit(f"{path}: needs examples of both labels")
    return texts, labels


def split(n: int, labels: list[int], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """A stratified train/test split, the same for the same seed."""
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(set(labels)):
        idx = [i for i in range(n) if labels[i] == label]
        rng.shuffle(idx)
        cut = max(1, round(len(idx) * holdout))
        test += idx[:cut]
        train += idx[cut:]
    return train, test


def metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    accuracy = float((predicted == truth).mean())
    f1s = []
    for label in range(len(LABELS)):
        tp = float(((predicted == label) & (truth == label)).sum())
        fp = float(((predicted == label) & (truth != label)).sum())
        fn = float(((predicted != label) & (truth == label)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": round(accuracy, 4), "f1_macro": round(sum(f1s) / len(f1s), 4)}


def build_model(dims: int, hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(dims, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                               torch.nn.Linear(hidden, len(LABELS)))


def train(features: np.ndarray, labels: np.ndarray, epochs: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(features.shape[1], hidden)
    optimiser = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-3)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    model.train()
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
    return model.eval()


def export_onnx(model: torch.nn.Module, dims: int, path: Path) -> None:
    example = torch.zeros(2, dims)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # optional torchvision ops are irrelevant here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["features"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
                          external_data=False)


DEFAULTS = {"epochs": 60, "hidden": 32, "holdout": 0.2, "seed": 7}


def parameters() -> dict[str, float]:
    """The job's FNSERVE_PARAMS over the defaults; an unknown or mistyped one stops the run."""
    given = json.loads(os.environ.get("FNSERVE_PARAMS") or "{}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    values = {**DEFAULTS, **given}
    for name, default in DEFAULTS.items():
        if not isinstance(values[name], (int, float)) or isinstance(values[name], bool):
            raise SystemExit(f"parameter {name} must be a number (got {values[name]!r})")
        values[name] = type(default)(values[name])
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "reviews.csv")
    parser.add_argument("--out", type=Path, default=os.environ.get("FNSERVE_OUTPUT_DIR"),
                        help="where the artifact goes (default: $FNSERVE_OUTPUT_DIR, set by the job wrapper)")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("no output folder: run as a job (fnserve train) or pass --out")
    p = parameters()

    started = time.monotonic()
    config = FeatureConfig()
    texts, labels = read_dataset(args.data)
    features, targets = featurize(texts, config), np.array(labels, dtype=np.int64)
    train_idx, test_idx = split(len(texts), labels, p["holdout"], p["seed"])
    model = train(features[train_idx], targets[train_idx], p["epochs"], p["hidden"], p["seed"])
    with torch.no_grad():
        predicted = model(torch.from_numpy(features[test_idx])).argmax(dim=1).numpy()
    scores = metrics(predicted, targets[test_idx])

    args.out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, config.dims, args.out / "model.onnx")
    (args.out / "labels.json").write_text(json.dumps(LABELS))
    (args.out / "featurizer.json").write_text(json.dumps(config.to_dict()))
    report = {**scores, "train_examples": len(train_idx), "test_examples": len(test_idx),
              "epochs": p["epochs"], "seconds": round(time.monotonic() - started, 2)}
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"artifact": str(args.out), **report}))


if __name__ == "__main__":
    sys.exit(main())
