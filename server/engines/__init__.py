"""Engines: one interface (``base.EmbeddingEngine``), chosen by config. Runtimes are imported lazily, so
importing this package needs none of onnxruntime / openvino / tritonclient."""

from __future__ import annotations

from pathlib import Path

from d2v.export.manifest import ModelManifest

from .base import EmbeddingEngine, warmup_inputs

__all__ = ["EmbeddingEngine", "build_engine", "warmup_inputs"]


def build_engine(manifest: ModelManifest, model_dir: Path, settings) -> EmbeddingEngine:
    """The engine ``settings.engine`` names, for one model (``settings``: ``ServerSettings``)."""
    if settings.engine == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(
            manifest, model_dir, variant=settings.variant, intra_op_threads=settings.intra_op_threads
        )
    if settings.engine == "openvino":
        from .openvino import OpenVinoEngine

        return OpenVinoEngine(
            manifest,
            model_dir,
            variant=settings.variant,
            precision=settings.openvino_precision,
            intra_op_threads=settings.intra_op_threads,
        )
    from .triton import TritonEngine

    return TritonEngine(
        manifest,
        model_dir,
        url=settings.triton_url,
        protocol=settings.triton_protocol,
        mode=settings.triton_mode,
        timeout_s=settings.triton_timeout_s,
        retry_after_s=settings.retry_after_s,
    )
