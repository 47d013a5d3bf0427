"""The exported model's interface (docs/contracts.md, "Exported model"), written once.

Export writes exactly these ONNX names; every runtime that runs the graph (the embedded engines, Triton's
encoder, batch extraction, the benchmarks) builds its feeds, picks its output and trims token outputs with
the functions here, and every synthetic batch (engine warm-up, export parity, benchmarks) comes from
``synthetic_inputs``. Torch-free: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Arrays = dict[str, np.ndarray]

MODALITIES = ("text", "image", "audio")
NORMS = ("layer", "target")
POOLINGS = ("mean", "cls")  # pooled vectors; requests may also ask for "none" (token-level)

INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "text": ("input_ids", "attention_mask"),
    "audio": ("input_values", "attention_mask"),
    "image": ("pixel_values",),
}
PRIMARY_INPUT = {m: names[0] for m, names in INPUT_NAMES.items()}  # the tensor a front end embeds
TOP_K_INPUT = "d2v_top_k"  # optional int64 [1]: how many top layers to average (per-layer selection exports)
TOKENS_OUTPUT = "d2v_token_embeddings"
TOKEN_MASK_OUTPUT = "d2v_token_mask"
MEAN_OUTPUT = "d2v_mean_embedding"
CLS_OUTPUT = "d2v_cls_embedding"

_OUTPUT_FOR_POOLING = {"mean": MEAN_OUTPUT, "cls": CLS_OUTPUT, "none": TOKENS_OUTPUT}


def output_names(modality: str) -> tuple[str, ...]:
    """The graph's outputs, in order; audio has no CLS token."""
    base = (TOKENS_OUTPUT, TOKEN_MASK_OUTPUT, MEAN_OUTPUT)
    return (*base, CLS_OUTPUT) if modality in ("text", "image") else base


def output_for(pooling: str) -> str:
    """The output that answers a request's ``pooling`` (``mean``, ``cls``, or ``none`` for token-level)."""
    return _OUTPUT_FOR_POOLING[pooling]


class _TopK(Protocol):
    supports_top_k: bool
    top_k: int


def feeds(manifest: _TopK, inputs: Arrays, top_k: int | None = None) -> Arrays:
    """``inputs`` plus the ``d2v_top_k`` feed where the graph takes one (default: the manifest's K)."""
    if manifest.supports_top_k:
        inputs = {**inputs, TOP_K_INPUT: np.array([top_k or manifest.top_k], dtype=np.int64)}
    return inputs


def real_tokens(tokens: np.ndarray, token_mask: np.ndarray) -> list[np.ndarray]:
    """Per row, the token embeddings of real tokens only (``d2v_token_mask`` == 1): ``[T_i, D]`` each."""
    mask = np.asarray(token_mask) == 1
    return [np.asarray(tokens[i])[mask[i]] for i in range(mask.shape[0])]


def worst_cosine(reference: np.ndarray, got: np.ndarray) -> float:
    """The lowest row cosine of two ``[B, D]`` arrays (float64; a NaN row counts as -1)."""
    a, b = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    return float(np.nan_to_num(cos, nan=-1.0).min())


def pooled_cosine(reference: Arrays, got: Arrays) -> float:
    """The worst row cosine over the pooled outputs present (mean and, for text / image, CLS): how variants
    and engines are scored against fp32."""
    return min((worst_cosine(reference[n], got[n]) for n in (MEAN_OUTPUT, CLS_OUTPUT) if n in reference), default=1.0)


# ----------------------------------------------------------------------------------------- synthetic inputs


@dataclass
class InputSpec:
    """What inputs a model takes, enough to build a valid synthetic batch."""

    modality: str
    vocab_size: int = 0  # text (0: unknown, ids stay in the range every tokenizer has)
    pad_id: int = 1  # text
    max_tokens: int = 512  # text
    image_size: int = 224  # image
    min_samples: int = 400  # audio: the receptive field of one frame
    sample_rate: int = 16_000  # audio

    @classmethod
    def from_config(cls, model_cfg: Any, preprocessing: Any) -> InputSpec:
        """From a checkpoint's model config and preprocessing config (the export side)."""
        m = model_cfg.modality
        if m == "text":
            return cls(
                m,
                vocab_size=model_cfg.text.vocab_size,
                pad_id=model_cfg.text.pad_id,
                max_tokens=min(model_cfg.text.max_tokens, getattr(preprocessing, "max_length", 512)),
            )
        if m == "image":
            return cls(m, image_size=model_cfg.image.image_size)
        receptive = 1
        for _, kernel, stride in reversed(model_cfg.audio.conv_layers):
            receptive = (receptive - 1) * stride + kernel
        return cls(m, min_samples=receptive, sample_rate=getattr(preprocessing, "sample_rate", 16_000))

    @classmethod
    def from_manifest(cls, manifest: Any, vocab_size: int = 0) -> InputSpec:
        """From ``model.json`` (the runtime side, which has no model config)."""
        pre = manifest.preprocessing
        if manifest.modality == "text":
            return cls(
                "text",
                vocab_size=vocab_size,
                pad_id=int(pre.get("pad_id", 1)),
                max_tokens=int(pre.get("max_length", 512)),
            )
        if manifest.modality == "image":
            size = manifest.inputs["pixel_values"].shape[-1] if "pixel_values" in manifest.inputs else None
            return cls("image", image_size=int(size if isinstance(size, int) else pre.get("image_size", 224)))
        return cls("audio", sample_rate=int(pre.get("sample_rate", 16_000)))


def synthetic_inputs(spec: InputSpec, lengths: list[int], seed: int) -> Arrays:
    """A right-padded batch with one row per entry of ``lengths`` (tokens / samples; ignored for images).

    Text rows are ``<s> ids... </s>`` then padding; audio rows are noise then zeros; images are noise.
    """
    rng = np.random.default_rng(seed)
    batch, longest = len(lengths), max(lengths)
    if spec.modality == "image":
        x = rng.standard_normal((batch, 3, spec.image_size, spec.image_size)).astype(np.float32)
        return {"pixel_values": x}
    mask = (np.arange(longest)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    if spec.modality == "text":
        ids = rng.integers(5, max(spec.vocab_size, 6), size=(batch, longest)).astype(np.int64)
        ids[:, 0] = 0  # <s>
        for row, n in enumerate(lengths):
            ids[row, n - 1] = 2  # </s>
        ids = np.where(mask == 1, ids, spec.pad_id)
        return {"input_ids": ids, "attention_mask": mask}
    x = rng.standard_normal((batch, longest)).astype(np.float32) * mask
    return {"input_values": x.astype(np.float32), "attention_mask": mask}


def warmup_lengths(spec: InputSpec, batch: int = 2) -> list[int]:
    """Shapes like real traffic (16 tokens, one second of audio), so the first request pays no lazy setup."""
    if spec.modality == "text":
        return [min(16, spec.max_tokens)] * batch
    if spec.modality == "audio":
        return [spec.sample_rate] * batch
    return [1] * batch
