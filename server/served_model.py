"""One served model: preprocessor + dynamic batcher + engine, and the per-item results they produce.

The request path is: raw inputs -> ``load_items`` (decode / tokenize in the preprocessing thread pool,
never on the event loop) -> ``embed`` (batcher -> collate + engine -> results split back per item).
Pooling selection, normalisation and output encoding happen in ``postprocess.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from d2v.core.contract import TOKEN_MASK_OUTPUT, TOKENS_OUTPUT, feeds, output_for, real_tokens
from d2v.core.errors import D2VError, InvalidInput, PayloadTooLarge
from d2v.core.manifest import ModelManifest
from d2v.models.preprocessing import build_preprocessor, probe
from d2v.runtime.engines.base import EmbeddingEngine

from .admission import Admission, AdmissionLimits
from .batching import DynamicBatcher
from .metrics import Metrics
from .settings import ServerSettings

Pooling = str  # "mean" | "cls" | "none"


@dataclass(frozen=True)
class ItemResult:
    vector: np.ndarray  # [D] pooled, or [T_i, D] token-level (trimmed by d2v_token_mask)
    tokens: int  # real model tokens (text: input tokens incl. specials; audio frames; image patches)


@dataclass(frozen=True)
class ItemOutputs:
    """Several contract outputs of one item from one engine run (the KServe front end asks for many)."""

    values: dict[str, np.ndarray]  # pooled [D]; d2v_token_embeddings [T_i, D] (real tokens only)
    tokens: int


@dataclass(frozen=True)
class TokenIds:
    """Pre-tokenized text input (OpenAI ``input`` as token-id lists): used as-is, never re-tokenized."""

    ids: list[int]


class RawPreprocessor:
    """For engines that preprocess server-side (Triton ensemble): the raw bytes travel as BYTES [B, 1].

    Text limits still apply here as in encoder mode: the character limit before anything is sent, and
    ``truncate: false`` by tokenizing locally (``length_check``, the same text preprocessor) to refuse an
    over-long input with the same 413 instead of letting the ensemble truncate it silently.
    """

    def __init__(self, modality: str, input_name: str, length_check: Any = None) -> None:
        self.modality = modality
        self.input_name = input_name
        self.length_check = length_check

    def load_item(self, raw: Any, *, truncate: bool = True) -> bytes:
        if isinstance(raw, str):
            if not truncate:
                if self.length_check is None:
                    raise InvalidInput("'truncate: false' needs the model's tokenizer next to the gateway's manifest")
                self.length_check.load_item(raw, truncate=False)
            return raw.encode("utf-8")
        return bytes(raw)

    def collate(self, items: list[bytes]) -> dict[str, np.ndarray]:
        return {self.input_name: np.array([[item] for item in items], dtype=object)}

    def describe(self) -> dict[str, Any]:
        return {"modality": self.modality, "preprocessing": "server-side (Triton ensemble)"}


def _item_cost(item: Any) -> int:
    """Padded-length unit of one decoded item: tokens (text), samples (audio), 1 (fixed-size images)."""
    if isinstance(item, list):
        return len(item)
    if isinstance(item, np.ndarray) and item.ndim == 1:
        return int(item.shape[0])
    if isinstance(item, bytes):
        return len(item)
    return 1


class ServedModel:
    def __init__(self, engine: EmbeddingEngine, settings: ServerSettings, pool: Executor, metrics: Metrics) -> None:
        self.engine = engine
        self.manifest: ModelManifest = engine.manifest
        self.name = self.manifest.name
        self.modality = self.manifest.modality
        self.settings = settings
        self._pool = pool
        self.metrics = metrics
        self.preprocessor = self._build_preprocessor()
        self.max_batch_size = min(settings.max_batch_size, self.manifest.max_batch_size)
        budget = {"text": settings.max_batch_tokens, "audio": settings.max_batch_samples}.get(self.modality)
        self.batcher = DynamicBatcher(
            self._run_batch,
            name=self.name,
            max_batch_size=self.max_batch_size,
            max_batch_cost=None if engine.raw_inputs else budget,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            on_batch=lambda size, cost: metrics.batch_size.labels(self.name).observe(size),
            on_depth=lambda depth: metrics.queue_depth.labels(self.name).set(depth),
            on_drop=lambda n: metrics.dropped.labels(self.name).inc(n),
        )
        limits = AdmissionLimits(  # items: what the batcher can hold (its queue + the window it runs)
            max_requests=settings.max_concurrent_requests,
            max_items=settings.max_queue + self.batcher.window,
            max_bytes=settings.max_inflight_bytes,
        )
        self.admission = Admission(
            self.name,
            limits,
            retry_after_s=settings.retry_after_s,
            on_refuse=lambda bound: metrics.refused.labels(self.name, bound).inc(),
        )
        self.ready = False
        self.error: str | None = None  # why warm-up failed, for /readyz

    def _build_preprocessor(self) -> Any:
        if self.engine.raw_inputs:
            return RawPreprocessor(self.modality, self.manifest.triton.raw_input, self._length_check())
        return self._local_preprocessor()

    def _length_check(self) -> Any:
        if self.modality != "text":
            return None
        try:
            return self._local_preprocessor()
        except D2VError:  # no tokenizer beside the manifest: 'truncate: false' is refused with a 400 then
            return None

    def _local_preprocessor(self) -> Any:
        limits: dict[str, Any] = {}
        if self.modality == "text":
            limits = {"truncate": self.settings.truncate}
            if self.settings.max_input_tokens is not None:
                limits["max_length"] = self.settings.max_input_tokens
        elif self.modality == "audio" and self.settings.max_audio_seconds is not None:
            limits["max_seconds"] = self.settings.max_audio_seconds
        elif self.modality == "image":
            limits["max_pixels"] = self.settings.max_image_pixels
        return build_preprocessor(self.manifest.preprocessing, self.engine.model_dir, **limits)

    # ------------------------------------------------------------------------------------- limits
    def limits(self) -> dict[str, Any]:
        pre = getattr(self.preprocessor, "length_check", None) or self.preprocessor
        out: dict[str, Any] = {"max_batch_size": self.max_batch_size}
        if self.modality == "text":
            out["max_input_tokens"] = getattr(pre, "max_length", None)
            out["max_text_chars"] = self.settings.max_text_chars
        elif self.modality == "audio":
            out["max_audio_seconds"] = getattr(pre, "max_seconds", None)
            out["sample_rate"] = getattr(pre, "sample_rate", None)
            out["max_audio_sample_rate"] = self.settings.max_audio_sample_rate
        else:
            out["max_image_pixels"] = getattr(pre, "max_pixels", None)
            out["image_size"] = self.manifest.preprocessing.get("image_size")
        return out

    # -------------------------------------------------------------------------------- preprocessing
    def _load_one(self, raw: Any, truncate: bool) -> Any:
        if isinstance(raw, TokenIds):
            if self.engine.raw_inputs:
                raise InvalidInput(
                    "token-id input is not available when Triton runs the ensemble, which tokenizes the text "
                    "itself (--triton-mode encoder accepts token ids)"
                )
            return self._load_ids(raw.ids, truncate)
        if self.modality == "text":
            if not isinstance(raw, str):
                raise InvalidInput("text input must be a string")
            if not raw:
                raise InvalidInput("text input is empty")
            if len(raw) > self.settings.max_text_chars:
                if not truncate:
                    raise PayloadTooLarge(
                        f"text is {len(raw)} characters long; the limit is {self.settings.max_text_chars}",
                        code="input_too_long",
                    )
                raw = raw[: self.settings.max_text_chars]
            return self.preprocessor.load_item(raw, truncate=truncate)
        if self.modality == "audio":  # a header read; the ensemble gets the same refusal as encoder mode
            rate = probe(raw).sample_rate
            if rate > self.settings.max_audio_sample_rate:
                raise PayloadTooLarge(f"audio sample rate {rate} Hz is above {self.settings.max_audio_sample_rate} Hz")
        return self.preprocessor.load_item(raw)

    def _load_ids(self, ids: list[int], truncate: bool) -> list[int]:
        if self.modality != "text":
            raise InvalidInput(f"token-id input is only accepted by text models; {self.name!r} is {self.modality}")
        if not ids:
            raise InvalidInput("token-id input is empty")
        vocab = self.preprocessor.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise InvalidInput(f"token ids must be in [0, {vocab})")
        limit = self.preprocessor.max_length
        if len(ids) > limit:
            if not truncate:
                raise PayloadTooLarge(f"input is {len(ids)} tokens long; the limit is {limit}", code="input_too_long")
            ids = ids[:limit]
        return list(ids)

    def _load_all(self, raws: Sequence[Any], truncate: bool) -> list[Any]:
        items = []
        for index, raw in enumerate(raws):
            try:
                items.append(self._load_one(raw, truncate))
            except D2VError as exc:  # name the offending item; keep the class (status) and code
                exc.message = f"input[{index}]: {exc.message}"
                exc.args = (exc.message,)
                raise
        return items

    async def load_items(self, raws: Sequence[Any], *, truncate: bool | None = None) -> list[Any]:
        """Decode / tokenize off the event loop (tokenizers, Pillow and soxr release the GIL)."""
        start = time.perf_counter()
        truncate = self.settings.truncate if truncate is None else truncate
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(self._pool, self._load_all, list(raws), truncate)
        self.metrics.preprocess_seconds.labels(self.name).observe(time.perf_counter() - start)
        return items

    # ------------------------------------------------------------------------------------ inference
    def check_options(self, pooling: Pooling, top_k: int | None) -> None:
        if pooling == "cls" and not self.manifest.has_cls:
            raise InvalidInput(f"pooling 'cls' is not available for {self.modality} model {self.name!r}; use mean")
        if top_k is not None:
            if self.engine.raw_inputs:  # the ensemble's preprocess model owns the encoder inputs
                raise InvalidInput("'layers' is not available when Triton runs the ensemble (--triton-mode encoder)")
            if not self.manifest.supports_top_k:
                raise InvalidInput(
                    f"model {self.name!r} was exported with a fixed layer average (top_k={self.manifest.top_k}); "
                    "re-export with per-layer selection to use 'layers'"
                )
            if not 1 <= top_k <= self.manifest.num_layers:
                raise InvalidInput(f"layers must be in [1, {self.manifest.num_layers}], got {top_k}")

    async def embed(self, items: list[Any], *, pooling: Pooling, top_k: int | None = None) -> list[ItemResult]:
        self.check_options(pooling, top_k)
        wanted = output_for(pooling)
        results = await self.infer(items, (wanted,), top_k=top_k)
        return [ItemResult(r.values[wanted], r.tokens) for r in results]

    async def infer(
        self, items: list[Any], outputs: tuple[str, ...], *, top_k: int | None = None, deadline: float | None = None
    ) -> list[ItemOutputs]:
        """``outputs`` (contract names, checked by the caller) of every item, from one engine run per batch;
        ``deadline`` (``time.monotonic()``): items still queued then never run (``TimeoutError``)."""
        costs = [_item_cost(item) for item in items]
        return await self.batcher.submit(items, costs, key=(outputs, top_k), deadline=deadline)

    async def _run_batch(self, key: tuple[tuple[str, ...], int | None], items: list[Any]) -> list[ItemOutputs]:
        wanted, top_k = key
        loop = asyncio.get_running_loop()
        inputs = await loop.run_in_executor(self._pool, self.preprocessor.collate, items)
        if not self.engine.raw_inputs:  # the ensemble's preprocess model owns the encoder inputs
            inputs = feeds(self.manifest, inputs, top_k)
        names = [n for n in wanted if n != TOKEN_MASK_OUTPUT] + [TOKEN_MASK_OUTPUT]
        start = time.perf_counter()
        out = await self.engine.embed(inputs, names)
        self.metrics.inference_seconds.labels(self.name).observe(time.perf_counter() - start)
        mask = np.asarray(out[TOKEN_MASK_OUTPUT])
        counts = mask.sum(axis=1).astype(int)
        columns: dict[str, list[np.ndarray]] = {}
        for name in names[:-1]:
            values = np.asarray(out[name], dtype=np.float32)
            columns[name] = real_tokens(values, mask) if name == TOKENS_OUTPUT else list(values)
        return [
            ItemOutputs({name: column[i] for name, column in columns.items()}, int(count))
            for i, count in enumerate(counts)
        ]

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.engine.load()
        await self.batcher.start()

    async def warmup(self) -> None:
        await self.engine.warmup()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        await self.engine.close()

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "modality": m.modality,
            "dim": m.embedding_dim,
            "num_layers": m.num_layers,
            "top_k": m.top_k,
            "supports_top_k": m.supports_top_k,
            "pooling": m.pooling,
            "poolings": ["mean", "cls", "none"] if m.has_cls else ["mean", "none"],
            "norm": m.norm,
            # Where the weights came from (sha256, converted file, student / EMA teacher); no local paths.
            "source": {k: v for k, v in m.source.items() if k != "checkpoint"},
            "ready": self.ready,
            **self.engine.describe(),
            "limits": self.limits(),
        }
