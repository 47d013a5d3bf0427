"""Engines: one interface (``base.EmbeddingEngine``), chosen by an ``EngineConfig``. Runtimes are imported
lazily, so importing this package needs none of onnxruntime / openvino / tritonclient."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from d2v.core.errors import ConfigError
from d2v.core.manifest import ModelManifest

from .base import EmbeddingEngine, warmup_inputs

__all__ = ["EmbeddingEngine", "EngineConfig", "build_engine", "warmup_inputs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs a model and how (the server builds it from its settings)."""

    # auto: the fastest (engine, variant) this host runs within ``min_cosine`` (d2v.runtime.selection)
    engine: Literal["auto", "onnxruntime", "openvino", "triton"] = "auto"
    variant: str | None = None  # default: the manifest's default_variant (not with auto)
    intra_op_threads: int = 0  # CPU threads per model (0: the runtime's default)
    openvino_precision: Literal["bf16", "f32"] = "f32"  # for fp32 variants; a bf16 variant always runs bf16
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_mode: Literal["encoder", "ensemble"] = "encoder"
    triton_timeout_s: float = 30.0
    retry_after_s: float = 1.0  # what an overloaded Triton tells clients to wait
    min_cosine: float = 0.999  # auto: worst pooled cosine vs fp32 a variant must keep to be chosen
    calibration_budget_s: float = 10.0  # auto: time to measure the candidates when no measurement fits


def openvino_has_bf16() -> bool:
    import openvino as ov  # lazy: only asked when a bf16 variant is chosen

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def build_engine(manifest: ModelManifest, model_dir: Path, settings: EngineConfig) -> EmbeddingEngine:
    """The engine ``settings.engine`` names, for one model.

    The variant (``settings.variant``, default: the manifest's ``default_variant``) is checked here, before
    the server binds: a variant built for another engine (``model.json`` ``variants.<name>.engine``), one the
    manifest does not list, or bf16 on a CPU without BF16 is a ``ConfigError`` naming what would work.
    """
    if settings.engine == "auto":
        return _build_auto(manifest, model_dir, settings)
    if settings.engine == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine

        name, _ = manifest.select_variant("onnxruntime", settings.variant)
        return OnnxRuntimeEngine(manifest, model_dir, variant=name, intra_op_threads=settings.intra_op_threads)
    if settings.engine == "openvino":
        from .openvino import OpenVinoEngine

        name, variant = manifest.select_variant("openvino", settings.variant)
        precision = settings.openvino_precision
        if variant.precision == "bf16":
            if not openvino_has_bf16():
                raise ConfigError(
                    f"model {manifest.name!r} variant {name!r} needs bf16, but OpenVINO reports no BF16 support on "
                    f"this CPU (AMX or AVX512-BF16); pick another --variant ({manifest.variants_for('openvino')})"
                )
            precision = "bf16"
        return OpenVinoEngine(
            manifest, model_dir, variant=name, precision=precision, intra_op_threads=settings.intra_op_threads
        )
    if settings.variant is not None:
        raise ConfigError(
            "--variant does not apply to --engine triton: the Triton repository fixes the variant when it is "
            "generated (d2v export --format triton --triton-variant NAME)"
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


def _build_auto(manifest: ModelManifest, model_dir: Path, settings: EngineConfig) -> EmbeddingEngine:
    """Measure (or reuse measurements), choose, then build the chosen engine; it reports why in ``describe``."""
    from d2v.runtime.selection import select

    choice = select(
        manifest,
        model_dir,
        min_cosine=settings.min_cosine,
        budget_s=settings.calibration_budget_s,
        threads=settings.intra_op_threads,
        variant=settings.variant,
    )
    log.info("model %s: engine auto chose %s", manifest.name, choice.reason())
    precision = "bf16" if choice.precision == "bf16" else "f32"
    concrete = replace(settings, engine=choice.engine, variant=choice.variant, openvino_precision=precision)
    engine = build_engine(manifest, model_dir, concrete)
    engine.selection = choice.as_dict()
    return engine
