"""Text → fixed-size feature vector, shared by train.py and the serving handler.

Hashed word unigrams, word bigrams (so "not good" differs from "good") and character 3–5-grams inside
words (so "wonderfully" lands near "wonderful"), log-scaled and L2-normalised. crc32 is used instead of
Python's hash(), which is salted per process and would make training and serving disagree.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass

import numpy as np

_TOKEN = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class FeatureConfig:
    dims: int = 8192
    char_min: int = 3
    char_max: int = 5

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _grams(text: str, config: FeatureConfig) -> list[str]:
    words = _TOKEN.findall(text.lower())
    grams = [f"w:{w}" for w in words]
    grams += [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    for word in words:
        padded = f"<{word}>"
        for n in range(config.char_min, config.char_max + 1):
            grams += [f"c:{padded[i:i + n]}" for i in range(len(padded) - n + 1)]
    return grams


def featurize(texts: list[str], config: FeatureConfig) -> np.ndarray:
    """A float32 matrix, one row per text."""
    out = np.zeros((len(texts), config.dims), dtype=np.float32)
    for row, text in enumerate(texts):
        for gram in _grams(text, config):
            out[row, zlib.crc32(gram.encode("utf-8")) % config.dims] += 1.0
    np.log1p(out, out=out)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out
