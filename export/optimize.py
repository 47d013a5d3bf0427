"""ONNX Runtime transformer fusions (``onnxruntime.transformers.optimizer``), kept only when they help.

The fused graph (Attention / SkipLayerNormalization / BiasGelu contrib ops) is saved as
``model.optimized.onnx`` and listed as the ``optimized`` variant when it is at least ``MIN_SPEEDUP``
faster than the fp32 graph on the held-out batch *and* matches it within the fp32 tolerance. The
measurement is recorded either way. The fused graph uses ORT contrib ops: serve it with ONNX Runtime
(OpenVINO and other runtimes should use ``model.onnx``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from d2v.export.parity import FP32_TOLERANCE, max_abs_diffs
from d2v.export.variants import _save, ort_runner, time_runner

log = logging.getLogger(__name__)

OPTIMIZED_FILE = "model.optimized.onnx"
MIN_SPEEDUP = 1.05


def optimize(
    fp32_path: Path,
    out_dir: Path,
    outputs: list[str],
    heldout: dict[str, np.ndarray],
    *,
    num_heads: int,
    hidden_size: int,
    threads: int = 0,
) -> dict:
    """Fuse, check, time; keep ``model.optimized.onnx`` only when it helps. Returns the measurement."""
    from onnxruntime.transformers.optimizer import optimize_model

    dst = out_dir / OPTIMIZED_FILE
    try:
        opt = optimize_model(
            str(fp32_path),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1,
            use_gpu=False,
        )
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        _save(opt.model, dst)
    except Exception as exc:  # fusion is an optimisation: never fail the export over it
        log.warning("transformer fusion failed, keeping the plain graph: %s", exc)
        return {"saved": False, "error": str(exc)}
    base_run = ort_runner(fp32_path, outputs, threads)
    opt_run = ort_runner(dst, outputs, threads)
    diffs = max_abs_diffs(base_run(heldout), opt_run(heldout))
    base_s, opt_s = time_runner(base_run, heldout), time_runner(opt_run, heldout)
    speedup = base_s / opt_s if opt_s > 0 else 0.0
    worst = max(diffs.values())
    keep = speedup >= MIN_SPEEDUP and worst <= FP32_TOLERANCE
    report = {
        "saved": keep,
        "file": OPTIMIZED_FILE if keep else None,
        "fused_operators": fused,
        "fp32_seconds_per_batch": base_s,
        "optimized_seconds_per_batch": opt_s,
        "speedup": speedup,
        "max_abs_diff_vs_fp32": worst,
        "rule": f"kept when speedup >= {MIN_SPEEDUP} and max abs diff <= {FP32_TOLERANCE}",
    }
    if not keep:
        for leftover in (dst, dst.with_name(dst.name + ".data")):
            leftover.unlink(missing_ok=True)
    log.info(
        "transformer fusions: %s, speedup %.2fx, max diff %.2g -> %s",
        fused,
        speedup,
        worst,
        "kept" if keep else "dropped",
    )
    return report
