"""The one engine interface: embedded ONNX Runtime, embedded OpenVINO, Triton and a fake for tests.

An engine serves **one** exported model (``model.json``) and knows nothing about HTTP, batching or
preprocessing: it maps named input arrays (the ONNX inputs of docs/contracts.md) to the named output
arrays it is asked for. Startup order, as in TEI: ``load()`` -> ``health()`` -> ``warmup()`` -> serve.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from d2v.core.contract import Arrays, InputSpec, feeds, output_names, synthetic_inputs, warmup_lengths
from d2v.core.errors import InternalError
from d2v.core.manifest import ModelManifest


@runtime_checkable
class EmbeddingEngine(Protocol):
    kind: str  # "onnxruntime", "openvino", "triton", "fake"
    manifest: ModelManifest
    model_dir: Path
    # True for engines that take raw request bytes (a Triton ensemble with server-side preprocessing):
    # the gateway then skips local preprocessing and sends ``{raw_input: BYTES [B, 1]}``.
    raw_inputs: bool

    async def load(self) -> None: ...

    async def embed(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays: ...

    async def health(self) -> bool: ...

    async def warmup(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def warmup_inputs(manifest: ModelManifest, batch: int = 2) -> Arrays:
    """Synthetic tensors shaped like real traffic, so the first user request does not pay for the
    runtime's lazy allocation and kernel selection."""
    spec = InputSpec.from_manifest(manifest)
    return feeds(manifest, synthetic_inputs(spec, warmup_lengths(spec, batch), seed=0))


class LocalEngine:
    """Shared part of the in-process engines: one inference thread per model.

    One thread (not the default executor) because the runtime already parallelises a batch over its
    intra-op threads; running two batches at once would only make them fight for the same cores, and it
    keeps the event loop free while a batch runs.
    """

    kind = "local"
    raw_inputs = False
    selection: dict[str, Any] | None = None  # set by ``--engine auto``: what was measured and chosen

    def __init__(self, manifest: ModelManifest, model_dir: Path, *, variant: str | None = None) -> None:
        self.manifest = manifest
        self.model_dir = Path(model_dir)
        self.variant = variant or manifest.default_variant
        self._executor: ThreadPoolExecutor | None = None
        self._loaded = False

    def _load_sync(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _run_sync(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:  # pragma: no cover - overridden
        raise NotImplementedError

    async def load(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.kind}-{self.manifest.name}")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)
        self._loaded = True

    async def embed(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        if self._executor is None:
            raise InternalError(f"engine for {self.manifest.name!r} used before load()")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_sync, inputs, list(outputs))

    async def health(self) -> bool:
        return self._loaded

    async def warmup(self) -> None:
        await self.embed(warmup_inputs(self.manifest), output_names(self.manifest.modality))

    async def close(self) -> None:
        self._loaded = False
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"engine": self.kind, "variant": self.variant}
        if self.selection is not None:
            info["selection"] = self.selection
        return info
