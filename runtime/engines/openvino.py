"""Embedded OpenVINO engine: compiles the same ``.onnx`` for the CPU.

``precision="bf16"`` sets ``INFERENCE_PRECISION_HINT=bf16``, the fast path on AMX CPUs (Sapphire Rapids:
~5x ONNX Runtime fp32 at cosine 0.99999, docs/platform_facts.md); ``"f32"`` matches ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from d2v.core.contract import TOP_K_INPUT
from d2v.core.errors import ConfigError, InternalError, InvalidInput
from d2v.core.manifest import ModelManifest

from .base import Arrays, LocalEngine


class OpenVinoEngine(LocalEngine):
    kind = "openvino"

    def __init__(
        self,
        manifest: ModelManifest,
        model_dir: Path,
        *,
        variant: str | None = None,
        precision: Literal["bf16", "f32"] = "bf16",
        intra_op_threads: int = 0,
        device: str = "CPU",
    ) -> None:
        super().__init__(manifest, model_dir, variant=variant)
        self.precision = precision
        self.intra_op_threads = intra_op_threads
        self.device = device
        self._compiled: Any = None
        self._request: Any = None

    def _dynamic_shapes(self, model: Any) -> dict[str, Any]:
        """Batch and length axes dynamic, so one compiled model serves every batch the batcher forms."""
        import openvino as ov

        shapes: dict[str, Any] = {}
        for port in model.inputs:
            name = port.get_any_name()
            if name == TOP_K_INPUT:
                continue
            rank = port.get_partial_shape().rank.get_length()
            if name == "pixel_values":  # [B, 3, H, W]: keep channels, let H/W follow the preprocessor
                shapes[name] = ov.PartialShape([-1, 3, -1, -1])
            else:
                shapes[name] = ov.PartialShape([-1] * rank)
        return shapes

    def _load_sync(self) -> None:
        import openvino as ov  # lazy: optional extra

        path = self.manifest.variant_file(self.model_dir, self.variant)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            model.reshape(self._dynamic_shapes(model))
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
            if self.intra_op_threads:
                config["INFERENCE_NUM_THREADS"] = self.intra_op_threads
            self._compiled = core.compile_model(model, self.device, config)
        except RuntimeError as exc:  # OpenVINO reports read/compile failures as RuntimeError
            raise ConfigError(f"cannot compile {path} with OpenVINO ({self.device}, {self.precision}): {exc}") from exc
        self._request = self._compiled.create_infer_request()

    def _run_sync(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        try:
            result = self._request.infer(inputs)
        except RuntimeError as exc:
            if "shape" in str(exc).lower():
                raise InvalidInput(f"model {self.manifest.name!r} rejected the input: {exc}") from exc
            raise InternalError(f"OpenVINO failed on model {self.manifest.name!r}") from exc
        by_name = {port.get_any_name(): value for port, value in result.items()}
        # The infer request reuses its output buffers on the next call: copy what we hand out.
        return {name: by_name[name].copy() for name in outputs}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision, "device": self.device}
