"""``d2v export --format tensorrt``: a TensorRT engine (``model.plan``) from the exported ONNX graph.

GPU hosts only. The engine is built with the TensorRT Python API, fp16 by default, with one optimisation
profile per configured (batch, length) bucket: min = (1, shortest), opt = (batch, bucket), max = (max batch,
bucket). Where no CUDA GPU (or no ``tensorrt`` package) is present it raises ``Unavailable`` before doing
any work, so the CLI says so and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from d2v.core.errors import InternalError, Unavailable
from d2v.core.manifest import ModelManifest

log = logging.getLogger(__name__)

PLAN_FILE = "model.plan"


@dataclass
class TensorRTOptions:
    fp16: bool = True
    max_batch_size: int = 64
    buckets: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # tokens (text) / seconds x SR (audio)
    workspace_bytes: int = 4 << 30


def gpu_status() -> str | None:
    """``None`` when a CUDA GPU and the ``tensorrt`` package are usable, else the reason they are not."""
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
        return "no NVIDIA GPU on this host (no nvidia-smi, no /dev/nvidia0)"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install tensorrt)"
    return None


def require_gpu() -> None:
    reason = gpu_status()
    if reason:
        raise Unavailable(
            f"TensorRT export needs a CUDA GPU: {reason}. Build the engine on the GPU host that serves it"
        )


def _profiles(manifest: ModelManifest, opts: TensorRTOptions) -> list[dict[str, tuple[tuple, tuple, tuple]]]:
    profiles = []
    if manifest.modality == "image":
        shape = [d for d in manifest.inputs["pixel_values"].shape[1:]]
        one, opt, top = (1, *shape), (min(8, opts.max_batch_size), *shape), (opts.max_batch_size, *shape)
        return [{"pixel_values": (one, opt, top)}]
    lo = 2
    for bucket in sorted(opts.buckets):
        dims = (1, lo), (min(8, opts.max_batch_size), bucket), (opts.max_batch_size, bucket)
        profiles.append({name: dims for name in manifest.inputs if name != "d2v_top_k"})
        lo = bucket + 1
    return profiles


def build_engine(model_dir: Path, opts: TensorRTOptions | None = None) -> Path:
    """Build ``model_dir/model.plan`` from ``model_dir/model.onnx``; writes ``tensorrt.json`` beside it."""
    require_gpu()
    import tensorrt as trt

    opts = opts or TensorRTOptions()
    manifest = ModelManifest.load(model_dir)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_dir / "model.onnx")):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InternalError(f"TensorRT cannot parse model.onnx: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    if opts.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profiles = _profiles(manifest, opts)
    for spec in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, mid, hi) in spec.items():
            profile.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InternalError("TensorRT engine build failed (see the TensorRT log above)")
    plan = model_dir / PLAN_FILE
    plan.write_bytes(bytes(serialized))
    info = {"fp16": opts.fp16, "profiles": [{k: [list(s) for s in v] for k, v in p.items()} for p in profiles]}
    (model_dir / "tensorrt.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("built %s with %d profile(s)", plan, len(profiles))
    return plan
