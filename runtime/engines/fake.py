"""A deterministic engine without a runtime, for fast HTTP-behaviour tests (latency, failures, readiness).

It follows the ONNX contract on shapes and names: text has one token per input id, audio one frame per
``AUDIO_STRIDE`` samples, images ``IMAGE_TOKENS`` patches; the vectors depend only on the input, so equal
inputs give equal embeddings in any batch. ``d2v_top_k`` scales the tokens, which makes the ``layers``
option observable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from d2v.core.contract import CLS_OUTPUT, MEAN_OUTPUT, TOKEN_MASK_OUTPUT, TOKENS_OUTPUT, TOP_K_INPUT
from d2v.core.errors import D2VError
from d2v.core.manifest import ModelManifest

from .base import Arrays, LocalEngine

AUDIO_STRIDE = 320
IMAGE_TOKENS = 4
_VOCAB = 4096


class FakeEngine(LocalEngine):
    kind = "fake"

    def __init__(
        self,
        manifest: ModelManifest,
        model_dir: Path | None = None,
        *,
        delay_s: float = 0.0,
        warmup_gate: asyncio.Event | None = None,
        error: D2VError | None = None,
    ) -> None:
        super().__init__(manifest, Path(model_dir or "."))
        self.delay_s = delay_s
        self.warmup_gate = warmup_gate  # warmup() blocks until set: lets tests observe "not ready yet"
        self.error = error  # raised by every embed(): lets tests drive the error mapping
        self.calls: list[int] = []  # batch sizes seen, in order
        rng = np.random.default_rng(0)
        dim = manifest.embedding_dim
        self._table = rng.standard_normal((_VOCAB, dim)).astype(np.float32)
        self._audio_proj = rng.standard_normal((AUDIO_STRIDE, dim)).astype(np.float32)
        self._image_proj = rng.standard_normal((3, dim)).astype(np.float32)

    def _load_sync(self) -> None:
        pass

    async def warmup(self) -> None:
        if self.warmup_gate is not None:
            await self.warmup_gate.wait()
        await super().warmup()

    def _tokens(self, inputs: Arrays) -> tuple[np.ndarray, np.ndarray]:
        modality = self.manifest.modality
        if modality == "text":
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            return self._table[ids % _VOCAB], mask.astype(np.int64)
        if modality == "audio":
            values, mask = inputs["input_values"], inputs["attention_mask"]
            frames = max(1, values.shape[1] // AUDIO_STRIDE)
            padded = np.zeros((values.shape[0], frames * AUDIO_STRIDE), dtype=np.float32)
            width = min(values.shape[1], frames * AUDIO_STRIDE)
            padded[:, :width] = values[:, :width]
            tokens = padded.reshape(values.shape[0], frames, AUDIO_STRIDE) @ self._audio_proj
            real = np.maximum(1, mask.sum(axis=1) // AUDIO_STRIDE)
            return tokens, (np.arange(frames)[None, :] < real[:, None]).astype(np.int64)
        pixels = inputs["pixel_values"]  # [B, 3, H, W] -> 4 quadrant tokens
        b, _, h, w = pixels.shape
        quads = [pixels[:, :, : h // 2, : w // 2], pixels[:, :, : h // 2, w // 2 :]]
        quads += [pixels[:, :, h // 2 :, : w // 2], pixels[:, :, h // 2 :, w // 2 :]]
        tokens = np.stack([q.mean(axis=(2, 3)) @ self._image_proj for q in quads], axis=1)
        return tokens.astype(np.float32), np.ones((b, IMAGE_TOKENS), dtype=np.int64)

    def _run_sync(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        if self.error is not None:
            raise self.error
        if self.delay_s:
            time.sleep(self.delay_s)
        tokens, mask = self._tokens(inputs)
        if TOP_K_INPUT in inputs:
            tokens = tokens * float(inputs[TOP_K_INPUT][0])
        self.calls.append(int(tokens.shape[0]))
        weights = mask[..., None].astype(np.float32)
        mean = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        values = {TOKENS_OUTPUT: tokens, TOKEN_MASK_OUTPUT: mask, MEAN_OUTPUT: mean, CLS_OUTPUT: tokens[:, 0]}
        return {name: values[name] for name in outputs}

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind}
