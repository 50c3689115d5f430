"""Prompt features for VIP's Gaussian process: unit vectors where similar prompts lie close.

Two featurisers:

* ``ngram_hash`` (default, ours): hashed character 3/4/5-grams of the lower-cased,
  whitespace-collapsed text, signed feature hashing into ``dim`` buckets, sublinear counts,
  L2-normalised. Deterministic across processes and machines (a fixed polynomial hash in
  uint64 arithmetic, never Python's salted ``hash``), no network, no model, ~0.1 ms a prompt.
  Prompts sharing words and formulas ("triangle", "mod 7", "\\frac") share buckets.
* ``sentence_transformers``: a local sentence-transformers model directory
  (``--allocator.vip.embedding_model PATH``), as the paper does (normalised sentence
  embeddings, arXiv 2602.01601). Loaded only when asked for, offline; the package is the
  optional extra ``vip`` (``pip install -e '.[vip]'``), so the default install stays light.
"""

from __future__ import annotations

import os
import re
from typing import Protocol, Sequence

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError

NGRAM_SIZES = (3, 4, 5)
_WHITESPACE = re.compile(r"\s+")
_BASE = np.uint64(1099511628211)  # FNV prime: spreads byte values across the word
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant for the final mix


class Featurizer(Protocol):
    dim: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm rows, one per text, float32."""
        ...


class NgramHashFeaturizer:
    """Signed hashing of character n-grams (see module doc)."""

    def __init__(self, dim: int = 128) -> None:
        if dim < 8:
            raise AllocatorError(f"--allocator.vip.feature_dim must be >= 8, got {dim}")
        self.dim = int(dim)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._one(text)
        return out

    def _one(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise AllocatorError(f"VIP prompt texts must be strings, got {type(text).__name__}")
        clean = " " + _WHITESPACE.sub(" ", text.lower()).strip() + " "
        data = np.frombuffer(clean.encode("utf-8"), dtype=np.uint8).astype(np.uint64)
        counts = np.zeros(self.dim, dtype=np.float64)
        with np.errstate(over="ignore"):
            for size in NGRAM_SIZES:
                if data.size < size:
                    continue
                grams = data.size - size + 1
                h = np.full(grams, np.uint64(size) * _MIX, dtype=np.uint64)
                for k in range(size):
                    h = (h ^ data[k : k + grams]) * _BASE
                h ^= h >> np.uint64(29)
                h *= _MIX
                h ^= h >> np.uint64(32)
                bucket = (h % np.uint64(self.dim)).astype(np.int64)
                sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
                counts += np.bincount(bucket, weights=sign, minlength=self.dim)
        vec = np.sign(counts) * np.log1p(np.abs(counts))
        norm = np.linalg.norm(vec)
        if norm == 0.0:  # empty text, or hash collisions cancelling out: a fixed direction
            vec = np.zeros(self.dim)
            vec[0] = 1.0
            norm = 1.0
        return (vec / norm).astype(np.float32)


class SentenceTransformerFeaturizer:
    """Normalised embeddings of a local sentence-transformers model, on CPU, offline."""

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            raise AllocatorError(
                f"--allocator.vip.embedding_model {path!r} is not a directory; give the path of a local "
                "sentence-transformers model (models are never downloaded)"
            )
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise AllocatorError(
                "--allocator.vip.embedding_model needs the sentence-transformers package, the optional "
                f"extra of this package: pip install -e '.[vip]' (import failed: {exc}); or leave the flag "
                "out to use the built-in --allocator.vip.featurizer ngram_hash"
            ) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = SentenceTransformer(path, device="cpu")
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = dimension()
        self.dim = int(dim) if dim else int(self.model.encode(["probe"]).shape[1])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def normalise_rows(features: np.ndarray) -> np.ndarray:
    """Caller-given feature vectors as unit rows (zero rows become NaN: "no features")."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = features / norms
    unit[norms[:, 0] == 0] = np.nan
    return unit.astype(np.float32)
