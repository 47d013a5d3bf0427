"""Where vectors come from: an in-process engine of the shared runtime (``d2v.runtime``) or a server via the SDK.

Both turn a batch of :class:`Item` of one modality into :class:`Row` s, one per item, never raising for a
bad input: the failure becomes the row's ``error``. A batch the engine rejects as a whole is retried item
by item so one corrupt file only fails itself.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from d2v.core.contract import TOKEN_MASK_OUTPUT, TOKENS_OUTPUT, feeds, output_for, real_tokens
from d2v.core.errors import ConfigError, D2VError, NotFound
from d2v.core.files import sha256_file

from .fs import read_bytes
from .inputs import Item
from .shards import Row

DECODE_ERRORS = (D2VError, OSError, UnicodeDecodeError, ValueError)  # one input's failure, never the batch's


@dataclass(frozen=True)
class ModelRef:
    """The model used for one modality and what the output records about it."""

    name: str
    modality: str
    dims: int  # of the stored vectors (after --dimensions)
    sha256: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Options:
    runtime: str = "auto"  # in-process engine: auto (fastest measured within the cosine bar), onnxruntime, openvino
    pooling: str | None = None  # None: the model's default
    tokens: bool = False
    normalize: bool = True
    dimensions: int | None = None


def output_settings(refs: dict[str, ModelRef], options: Options) -> dict[str, Any]:
    """What an output's vectors depend on; a resumed output must match it (``ShardStore.bind_settings``)."""
    return {
        "models": {m: {"name": r.name, "manifest_sha256": r.sha256} for m, r in refs.items()},
        "pooling": options.pooling,
        "normalize": options.normalize,
        "dimensions": options.dimensions,
        "tokens": options.tokens,
    }


class Backend(Protocol):
    def model_for(self, modality: str) -> ModelRef: ...

    def embed(self, modality: str, items: list[Item]) -> list[Row]: ...

    def close(self) -> None: ...


def read_raw(item: Item) -> Any:
    """The raw input the preprocessor or the SDK takes: the text, or the file's bytes/path.

    Raises:
        OSError, UnicodeDecodeError: the file cannot be read.
    """
    if item.text is not None:
        return item.text
    data = read_bytes(item.path)  # a local path or any filesystem's URI (d2v.extract.fs)
    return data.decode("utf-8") if item.modality == "text" else data


def per_item_fallback(items: list[Item], run: Callable[[list[Item]], list[Row]], reason: str) -> list[Row]:
    """Retry a rejected batch one item at a time (only when it had more than one item)."""
    if len(items) == 1:
        return [Row(items[0].id, items[0].modality, "", items[0].label, error=reason)]
    return [row for item in items for row in run([item])]


# ----------------------------------------------------------------------------------------- local engine


class LocalModel:
    """One model in this process: its preprocessor and ``workers`` runtime engines (one per thread; ``auto``
    measures once, then every worker reuses the cached choice)."""

    def __init__(self, manifest: Any, model_dir: Path, options: Options, workers: int) -> None:
        from d2v.models.preprocessing import build_preprocessor
        from d2v.runtime.postprocess import shape_vector

        self.manifest = manifest
        self.model_dir = model_dir
        self.options = options
        self.preprocessor = build_preprocessor(manifest.preprocessing, model_dir)
        self._shape = shape_vector
        self.pooling = options.pooling or manifest.pooling
        if self.pooling == "cls" and not manifest.has_cls:
            raise ConfigError(f"model {manifest.name!r} has no cls pooling; use --pooling mean")
        dims = options.dimensions or manifest.embedding_dim
        sha = sha256_file(model_dir / "model.json")
        self.ref = ModelRef(manifest.name, manifest.modality, dims, sha, str(model_dir))
        self._threads = max(1, (os.cpu_count() or 2) // max(1, workers))
        self._free: queue.Queue[tuple[Any, asyncio.AbstractEventLoop]] = queue.Queue()
        self._made = 0
        self._workers = max(1, workers)
        self._lock = threading.Lock()

    def _acquire(self) -> tuple[Any, asyncio.AbstractEventLoop]:
        with self._lock:
            if self._free.empty() and self._made < self._workers:
                from d2v.runtime.engines import EngineConfig, build_engine

                self._made += 1
                config = EngineConfig(engine=self.options.runtime, intra_op_threads=self._threads)
                engine = build_engine(self.manifest, self.model_dir, config)
                loop = asyncio.new_event_loop()
                loop.run_until_complete(engine.load())
                return engine, loop
        return self._free.get()

    def decode(self, item: Item) -> Any:
        """One item read and preprocessed (the CPU part; Ray runs it in tasks apart from the engine actors).

        Raises:
            D2VError, OSError, UnicodeDecodeError, ValueError: the input is unusable (``DECODE_ERRORS``).
        """
        return self.preprocessor.load_item(read_raw(item))

    def embed(self, items: list[Item]) -> list[Row]:
        """Rows for ``items`` (errors captured per item)."""
        rows: dict[int, Row] = {}
        decoded, good = [], []
        for i, item in enumerate(items):
            try:
                decoded.append(self.decode(item))
                good.append(i)
            except DECODE_ERRORS as exc:
                rows[i] = self._row(item, error=_reason(exc))
        if good:
            for i, row in zip(good, self.embed_decoded([items[i] for i in good], decoded), strict=True):
                rows[i] = row
        return [rows[i] for i in range(len(items))]

    def embed_decoded(self, items: list[Item], decoded: list[Any]) -> list[Row]:
        """Rows for already decoded items; a batch the engine rejects is retried item by item."""
        pooled = output_for(self.pooling)
        wanted = [pooled, TOKEN_MASK_OUTPUT] + ([TOKENS_OUTPUT] if self.options.tokens else [])
        try:
            out = self._run(self.preprocessor.collate(decoded), wanted)
        except D2VError as exc:
            if len(items) == 1:
                return [self._row(items[0], error=_reason(exc))]
            return [row for item, dec in zip(items, decoded, strict=True) for row in self.embed_decoded([item], [dec])]
        tokens = real_tokens(out[TOKENS_OUTPUT], out[TOKEN_MASK_OUTPUT]) if self.options.tokens else None
        return [
            self._row(item, vector=out[pooled][k], tokens=tokens[k] if tokens else None) for k, item in enumerate(items)
        ]

    def _run(self, inputs: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
        engine, loop = self._acquire()
        try:
            return loop.run_until_complete(engine.embed(feeds(self.manifest, inputs), wanted))
        finally:
            self._free.put((engine, loop))

    def _row(self, item: Item, *, vector: Any = None, tokens: Any = None, error: str | None = None) -> Row:
        o = self.options
        dim = self.manifest.embedding_dim
        if vector is not None:
            vector = self._shape(np.asarray(vector), dim=dim, dimensions=o.dimensions, normalize=o.normalize)
        if tokens is not None:
            tokens = self._shape(np.asarray(tokens), dim=dim, dimensions=o.dimensions, normalize=False)
        return Row(item.id, item.modality, self.ref.name, item.label, vector, tokens, error, item.path)

    def close(self) -> None:
        while not self._free.empty():
            engine, loop = self._free.get()
            loop.run_until_complete(engine.close())
            loop.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, D2VError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def resolve_models(store: Path, names: list[str]) -> dict[str, tuple[Any, Path]]:
    """``{modality: (manifest, model_dir)}`` from ``--model`` names/dirs, or every model in the store.

    Raises:
        NotFound, ConfigError: an unknown model, or two models for one modality.
    """
    from d2v.runtime.store import discover

    found: dict[str, tuple[Any, Path]] = {}
    for manifest, model_dir in discover(store, names):
        if manifest.modality in found:
            other = found[manifest.modality][0].name
            if names:
                raise ConfigError(f"models {other!r} and {manifest.name!r} both embed {manifest.modality}: pass one")
            continue  # the store's first (by name) model of a modality is the default
        found[manifest.modality] = (manifest, model_dir)
    return found


class LocalBackend:
    """In-process runtime engines, ``workers`` batches in parallel (each worker its own engine)."""

    def __init__(self, store: Path, models: list[str], options: Options, workers: int) -> None:
        self._found = resolve_models(store, models)
        self._store = store
        self.options = options
        self.workers = workers
        self._models: dict[str, LocalModel] = {}
        self._lock = threading.Lock()

    def _model(self, modality: str) -> LocalModel:
        with self._lock:
            if modality not in self._models:
                if modality not in self._found:
                    raise NotFound(f"no {modality} model in {self._store}: pass --model NAME_OR_DIR")
                manifest, model_dir = self._found[modality]
                self._models[modality] = LocalModel(manifest, model_dir, self.options, self.workers)
            return self._models[modality]

    def model_for(self, modality: str) -> ModelRef:
        return self._model(modality).ref

    def embed(self, modality: str, items: list[Item]) -> list[Row]:
        return self._model(modality).embed(items)

    def close(self) -> None:
        for model in self._models.values():
            model.close()


# ----------------------------------------------------------------------------------------------- server


class ServerBackend:
    """A running server through the SDK, its retries and chunking applying: ``d2v_client.Client`` (HTTP), or
    with ``grpc`` a streaming ``d2v_client.GrpcClient`` (KServe v2 ``ModelStreamInfer``, to the gateway or to
    a Triton ensemble: a few requests of each stream in flight at once)."""

    def __init__(
        self, url: str, api_key: str | None, models: list[str], options: Options, workers: int, grpc: bool = False
    ) -> None:
        from d2v_client import Client, GrpcClient

        if grpc:
            self.client = GrpcClient(url, api_key=api_key, max_concurrency=4, timeout=300.0, streaming=True)
        else:
            self.client = Client(url, api_key=api_key, max_concurrency=1, timeout=300.0)
        self.grpc = grpc
        self.options = options
        self._names = models
        self.workers = workers

    def _served(self) -> list[Any]:
        return self.client.models() if self.grpc else list(self.client.info().models)

    def model_for(self, modality: str) -> ModelRef:
        served = self._served()
        model = next((m for m in served if m.name in self._names and m.modality == modality), None)
        model = model or (next((m for m in served if m.modality == modality), None) if not self._names else None)
        if model is None:
            raise NotFound(
                f"the server serves no {modality} model{' named ' + str(self._names) if self._names else ''}"
            )
        raw = model.raw
        sha = raw.get("manifest_sha256") or (raw.get("source") or {}).get("sha256")
        dims = self.options.dimensions or model.dims or 0
        return ModelRef(model.name, modality, dims, sha, None)

    def embed(self, modality: str, items: list[Item]) -> list[Row]:
        """Rows for ``items``; a batch the server rejects (4xx) is retried item by item.

        Raises:
            d2v_client.D2VClientError: anything but bad input (auth, overload after retries, server down).
        """
        from d2v_client import BadRequestError

        ref = self.model_for(modality)
        rows: dict[int, Row] = {}
        raws, good = [], []
        for i, item in enumerate(items):
            try:
                raws.append(read_raw(item))
                good.append(i)
            except (OSError, UnicodeDecodeError) as exc:
                rows[i] = Row(item.id, modality, ref.name, item.label, error=_reason(exc), source=item.path)
        if good:
            o = self.options
            opts = {"model": ref.name, "normalize": o.normalize, "dimensions": o.dimensions}
            try:
                vecs = self.client.embed(modality, raws, pooling=o.pooling, **opts)
                toks = self.client.embed(modality, raws, pooling="none", **opts) if o.tokens else [None] * len(raws)
            except BadRequestError as exc:
                sub = per_item_fallback([items[i] for i in good], lambda b: self.embed(modality, b), exc.message)
                for i, row in zip(good, sub, strict=True):
                    rows[i] = (
                        row
                        if row.model
                        else Row(row.id, modality, ref.name, row.label, error=row.error, source=items[i].path)
                    )
            else:
                for k, i in enumerate(good):
                    it = items[i]
                    rows[i] = Row(it.id, modality, ref.name, it.label, vecs[k], toks[k], None, it.path)
        return [rows[i] for i in range(len(items))]

    def close(self) -> None:
        self.client.close()
