"""Output shaping shared by both APIs: ``dimensions`` (truncate, then re-normalise), L2 norm, encodings."""

from __future__ import annotations

import base64

import numpy as np

from d2v.core.errors import InvalidInput

_EPS = 1e-12


def shape_vector(vector: np.ndarray, *, dim: int, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Truncate the last axis to ``dimensions`` and L2-normalise rows (idempotent if the graph already did).

    data2vec is not Matryoshka-trained: truncation works but loses more quality than on models trained
    for it (documented in /info). Re-normalising after the cut keeps cosine = dot product.
    """
    if dimensions is not None:
        if dimensions > dim:
            raise InvalidInput(f"dimensions={dimensions} is larger than the model's embedding size {dim}")
        vector = vector[..., :dimensions]
    vector = np.asarray(vector, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(vector, axis=-1, keepdims=True)
        vector = vector / np.maximum(norms, _EPS)
    return vector


def encode(vector: np.ndarray, encoding_format: str) -> list | str:
    """``float``: nested lists; ``base64``: little-endian float32 bytes, row-major (what openai-python decodes
    with ``np.frombuffer(..., dtype="float32")``)."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()
