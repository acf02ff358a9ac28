"""Train the example iris classifier in PyTorch and export it with torch.export.

Run as a training job (train.yaml): `fnserve train functions/iris` — the job wrapper hands this script
an empty FNSERVE_OUTPUT_DIR and its parameters as FNSERVE_PARAMS (epochs, hidden, lr, holdout, seed),
and publishes the folder as a run only if the script exits 0. By hand: `python train.py --out DIR`.

The feature standardisation and the softmax are part of the exported model, so the served program
takes raw measurements (cm) and returns class probabilities: there is no preprocessing to keep in step
between training and serving. Output: model.pt2 (an exported program with a dynamic batch dimension),
signature.json (the tensor names the torch runtime serves), labels.json, and metrics.json (accuracy and
macro F1 on a stratified holdout, which the wrapper also copies into the run's manifest).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["setosa", "versicolor", "virginica"]  # fixed, so the output order never depends on the data
SIGNATURE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, len(FEATURES)]}],
             "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(LABELS)]}]}
DEFAULTS: dict[str, int | float] = {"epochs": 300, "hidden": 16, "lr": 0.02, "holdout": 0.2, "seed": 7}


def parameters() -> dict[str, int | float]:
    """The job's FNSERVE_PARAMS over the defaults; an unknown, mistyped or out-of-range one stops the run
    before any work, with one line that says which."""
    try:
        given = json.loads(os.environ.get("FNSERVE_PARAMS") or "{}")
    except ValueError as exc:
        raise SystemExit(f"FNSERVE_PARAMS is not JSON ({exc})") from None
    if not isinstance(given, dict):
        raise SystemExit("FNSERVE_PARAMS must be a JSON object")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    values = {**DEFAULTS, **given}
    for name, default in DEFAULTS.items():
        value = values[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or (isinstance(default, int) and value != int(value)):
            raise SystemExit(f"parameter {name} must be a{'n integer' if isinstance(default, int) else ' number'} "
                             f"(got {value!r})")
        values[name] = type(default)(value)
    if values["epochs"] < 1 or values["hidden"] < 1 or values["lr"] <= 0 or not 0 < values["holdout"] < 1:
        raise SystemExit(f"parameters out of range: need epochs ≥ 1, hidden ≥ 1, lr > 0, 0 < holdout < 1 "
                         f"(got {json.dumps(values)})")
    return values


def read_dataset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Measurements and label indices; bad rows stop the run with file:line, since a model trained
    around them would be published as if nothing were wrong."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    rows, labels = [], []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != [*FEATURES, "species"]:
            raise SystemExit(f"{path}:1: header must be {','.join([*FEATURES, 'species'])}")
        for line, row in enumerate(reader, start=2):
            if None in row or None in row.values():
                raise SystemExit(f"{path}:{line}: expected {len(FEATURES) + 1} comma-separated values")
            try:
                values = [float(row[name]) for name in FEATURES]
            except (TypeError, ValueError):
                raise SystemExit(f"{path}:{line}: expected numbers in {', '.join(FEATURES)}") from None
            if not all(math.isfinite(v) and v >= 0 for v in values):
                raise SystemExit(f"{path}:{line}: measurements must be finite and ≥ 0")
            if row["species"] not in LABELS:
                raise SystemExit(f"{path}:{line}: species must be one of {', '.join(LABELS)} "
                                 f"(got {row['species']!r})")
            rows.append(values)
            labels.append(LABELS.index(row["species"]))
    counts = [labels.count(i) for i in range(len(LABELS))]
    if min(counts) < 2:
        raise SystemExit(f"{path}: needs at least 2 rows of every species to hold one out "
                         f"(got {dict(zip(LABELS, counts, strict=True))})")
    return np.array(rows, dtype=np.float32), np.array(labels, dtype=np.int64)


def split(labels: np.ndarray, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """A stratified train/test split, the same for the same seed; every class keeps ≥ 1 row on each side."""
    rng = random.Random(seed)
    train, test = [], []
    for label in range(len(LABELS)):
        idx = [i for i in range(len(labels)) if labels[i] == label]
        rng.shuffle(idx)
        cut = min(len(idx) - 1, max(1, round(len(idx) * holdout)))
        test += idx[:cut]
        train += idx[cut:]
    return sorted(train), sorted(test)


class Classifier(torch.nn.Module):
    """Standardise → MLP → softmax. Mean and scale are buffers, so they travel inside the export."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("scale", torch.from_numpy(scale))
        self.net = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, len(LABELS)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """What training optimises: cross_entropy wants logits, not the served probabilities."""
        return self.net((features - self.mean) / self.scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=-1)


def fit(x: np.ndarray, y: np.ndarray, p: dict[str, int | float]) -> tuple[Classifier, float]:
    """Full-batch Adam on 120 rows: deterministic for a seed on CPU; ~0.1 s of work (plus ~1 s of
    one-off torch start-up on the first backward pass)."""
    torch.manual_seed(int(p["seed"]))
    model = Classifier(x.mean(axis=0), x.std(axis=0) + 1e-6, int(p["hidden"]))  # training rows only
    optimiser = torch.optim.Adam(model.parameters(), lr=float(p["lr"]))
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(int(p["epochs"])):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.logits(inputs), targets)
        loss.backward()
        optimiser.step()
    return model.eval(), float(loss.detach())


def scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    f1s = []
    for label in range(len(LABELS)):
        tp = float(((predicted == label) & (truth == label)).sum())
        wrong = float(((predicted == label) != (truth == label)).sum())  # false positives + false negatives
        f1s.append(2 * tp / (2 * tp + wrong) if tp else 0.0)
    return {"accuracy": round(float((predicted == truth).mean()), 4), "f1_macro": round(sum(f1s) / len(f1s), 4)}


def export(model: Classifier, example: np.ndarray, path: Path) -> None:
    """Save an exported program with a dynamic batch, then load it back and check it on 1 and 7 rows.

    The example has 2 rows on purpose: with a 1-row example torch.export specialises the batch to 1
    (a named Dim then fails to export; Dim.AUTO exports a program that only takes 1 row). min=1 keeps
    single-row requests valid. The round trip catches a program that would only fail once served.
    """
    def rows(n: int) -> torch.Tensor:  # n rows, repeating the data if it has fewer
        return torch.from_numpy(np.resize(example, (n, len(FEATURES))))

    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model.eval(), (rows(2),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.inference_mode():
        for n in (1, 7):
            got, expected = loaded(rows(n)), model(rows(n))
            if got.shape != (n, len(LABELS)) or not torch.allclose(got, expected, atol=1e-6):
                raise SystemExit(f"{path.name}: the exported program disagrees with the model on {n} row(s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "iris.csv")
    parser.add_argument("--out", type=Path, default=os.environ.get("FNSERVE_OUTPUT_DIR"),
                        help="where the artifact goes (default: $FNSERVE_OUTPUT_DIR, set by the job wrapper)")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("no output folder: run as a job (fnserve train functions/iris) or pass --out")
    p = parameters()

    started = time.monotonic()
    try:
        x, y = read_dataset(args.data)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SystemExit(f"{args.data}: not a readable UTF-8 CSV file ({exc})") from None
    train, test = split(y, float(p["holdout"]), int(p["seed"]))
    model, loss = fit(x[train], y[train], p)
    with torch.inference_mode():
        predicted = model(torch.from_numpy(x[test])).argmax(dim=1).numpy()

    args.out.mkdir(parents=True, exist_ok=True)
    export(model, x, args.out / "model.pt2")
    (args.out / "signature.json").write_text(json.dumps(SIGNATURE, indent=2) + "\n")
    (args.out / "labels.json").write_text(json.dumps(LABELS) + "\n")
    report = {**scores(predicted, y[test]), "train_loss": round(loss, 4), "train_examples": len(train),
              "test_examples": len(test), "epochs": p["epochs"], "seconds": round(time.monotonic() - started, 2)}
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"artifact": str(args.out), **report}))


if __name__ == "__main__":
    sys.exit(main())
