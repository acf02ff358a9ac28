"""Train the example sentiment classifier and export it as ONNX.

    python functions/sentiment/train.py [--data data/reviews.csv] [--out model]

Hashed n-gram features (featurize.py) → a small MLP in PyTorch, trained in seconds on a CPU; accuracy
and F1 are measured on a held-out split; the artifact folder gets model.onnx, labels.json,
featurizer.json and metrics.json. The folder is replaced only once everything is written.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import shutil
import sys
import tempfile
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "reviews.csv")
    parser.add_argument("--out", type=Path, default=HERE / "model")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    started = time.monotonic()
    config = FeatureConfig()
    texts, labels = read_dataset(args.data)
    features, targets = featurize(texts, config), np.array(labels, dtype=np.int64)
    train_idx, test_idx = split(len(texts), labels, args.holdout, args.seed)
    model = train(features[train_idx], targets[train_idx], args.epochs, args.hidden, args.seed)
    with torch.no_grad():
        predicted = model(torch.from_numpy(features[test_idx])).argmax(dim=1).numpy()
    scores = metrics(predicted, targets[test_idx])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".train-", dir=args.out.parent))
    try:
        export_onnx(model, config.dims, staging / "model.onnx")
        (staging / "labels.json").write_text(json.dumps(LABELS))
        (staging / "featurizer.json").write_text(json.dumps(config.to_dict()))
        report = {**scores, "train_examples": len(train_idx), "test_examples": len(test_idx),
                  "epochs": args.epochs, "seconds": round(time.monotonic() - started, 2)}
        (staging / "metrics.json").write_text(json.dumps(report, indent=2))
        if args.out.exists():
            shutil.rmtree(args.out)
        staging.rename(args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(json.dumps({"artifact": str(args.out), **report}))


if __name__ == "__main__":
    sys.exit(main())
