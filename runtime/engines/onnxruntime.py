"""Embedded ONNX Runtime engine: one ``InferenceSession`` per served model (the default, fp32-safe)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from d2v.core.errors import ConfigError, InternalError, InvalidInput
from d2v.core.manifest import ModelManifest

from .base import Arrays, LocalEngine


class OnnxRuntimeEngine(LocalEngine):
    kind = "onnxruntime"

    def __init__(
        self,
        manifest: ModelManifest,
        model_dir: Path,
        *,
        variant: str | None = None,
        intra_op_threads: int = 0,
        providers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(manifest, model_dir, variant=variant)
        self.intra_op_threads = intra_op_threads
        self.providers = list(providers) if providers else None
        self._session: Any = None

    def _load_sync(self) -> None:
        import onnxruntime as ort  # lazy: the package is an optional extra (cpu / gpu)

        path = self.manifest.variant_file(self.model_dir, self.variant)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        # Only one batch runs at a time per model (see LocalEngine), so no inter-op parallelism.
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = self.providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for unreadable / invalid graphs
            raise ConfigError(f"cannot load {path} with ONNX Runtime: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if not set(self.manifest.inputs) <= names:
            raise ConfigError(f"{path}: inputs {sorted(names)} do not match model.json {sorted(self.manifest.inputs)}")

    def _run_sync(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        try:
            values = self._session.run(list(outputs), inputs)
        except Exception as exc:
            # Shapes and dtypes are produced by our own preprocessing, so a failure here is either an
            # input the graph cannot take (e.g. an image of an unexpected size) or a bug.
            if "INVALID_ARGUMENT" in str(exc):
                raise InvalidInput(f"model {self.manifest.name!r} rejected the input: {exc}") from exc
            raise InternalError(f"ONNX Runtime failed on model {self.manifest.name!r}") from exc
        return dict(zip(outputs, values, strict=True))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._session is not None:
            info["providers"] = self._session.get_providers()
        return info
