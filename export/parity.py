"""Synthetic inputs for export, and the ONNX Runtime vs PyTorch parity report (``parity.json``).

Shapes: the export example is small (batch 2); parity runs at >= 3 other shapes, padded batches and
lengths the exporter never saw. Token outputs are compared on real tokens only (``d2v_token_mask`` = 1;
the values at padded positions are unspecified), the mask itself must match exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from d2v.core.contract import TOKEN_MASK_OUTPUT, TOKENS_OUTPUT, TOP_K_INPUT, InputSpec, synthetic_inputs
from d2v.core.errors import InternalError

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
PARITY_FILE = "parity.json"


def example_lengths(spec: InputSpec) -> list[int]:
    """The (small) shape traced at export."""
    return (
        [16, 11]
        if spec.modality == "text"
        else ([spec.min_samples * 6, spec.min_samples * 4] if spec.modality == "audio" else [1, 1])
    )


def parity_cases(spec: InputSpec) -> list[list[int]]:
    """>= 3 shapes unlike the export example: batch 1, padded batches, longer and shorter lengths."""
    if spec.modality == "image":
        return [[1], [1] * 3, [1] * 5]
    if spec.modality == "text":
        top = min(spec.max_tokens, 40)
        return [[7], [23, 11, 5], [top, top - 3, 9, 2]]
    r = spec.min_samples
    return [[r * 3 + 17], [r * 9, r * 5 + 3, r * 2], [r * 12 + 101, r * 12 + 101, r + 1]]


def heldout_lengths(spec: InputSpec) -> list[int]:
    """The held-out batch the variants are scored on (a different seed and mix of lengths)."""
    if spec.modality == "image":
        return [1] * 6
    if spec.modality == "text":
        top = min(spec.max_tokens, 48)
        return [top, 31, 17, 12, 8, 5]
    r = spec.min_samples
    return [r * 10, r * 7 + 11, r * 4, r * 3 + 5]


def run_torch(graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        out = graph(*(torch.from_numpy(feeds[n]) for n in graph.input_names))
    return {n: t.detach().cpu().numpy() for n, t in zip(graph.output_names, out, strict=True)}


def max_abs_diffs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-output max |ref - got|; token outputs over real tokens only; NaN/shape mismatch -> inf."""
    diffs: dict[str, float] = {}
    for name, r in ref.items():
        g = got[name]
        if r.shape != g.shape:
            diffs[name] = float("inf")
            continue
        if name == TOKEN_MASK_OUTPUT:
            diffs[name] = float(np.abs(r - g).max(initial=0))
            continue
        if name == TOKENS_OUTPUT and TOKEN_MASK_OUTPUT in ref:
            keep = ref[TOKEN_MASK_OUTPUT].astype(bool)
            r, g = r[keep], g[keep]
        d = np.abs(r.astype(np.float64) - g.astype(np.float64))
        diffs[name] = float(d.max(initial=0)) if np.isfinite(d).all() else float("inf")
    return diffs


def check_parity(graph, session, spec: InputSpec, *, tolerance: float = FP32_TOLERANCE, extra_feeds=None) -> dict:
    """Run every parity case through PyTorch and ORT; raise ``InternalError`` when a diff is over tolerance."""
    cases, worst = [], 0.0
    for i, lengths in enumerate(parity_cases(spec)):
        feeds = synthetic_inputs(spec, lengths, seed=1000 + i)
        if extra_feeds:
            feeds.update(extra_feeds)
        ref = run_torch(graph, feeds)
        got = dict(zip(graph.output_names, session.run(graph.output_names, feeds), strict=True))
        diffs = max_abs_diffs(ref, got)
        worst = max(worst, *diffs.values())
        cases.append(
            {
                "shapes": {k: list(v.shape) for k, v in feeds.items() if k != TOP_K_INPUT},
                "lengths": lengths if spec.modality != "image" else None,
                "padded": len(set(lengths)) > 1,
                "max_abs_diff": diffs,
            }
        )
    report = {
        "reference": "PyTorch fp32 (eval) vs ONNX Runtime CPU fp32",
        "tolerance": tolerance,
        "max_abs_diff": worst,
        "passed": worst <= tolerance,
        "cases": cases,
    }
    if not report["passed"]:
        raise InternalError(
            f"ONNX parity failed: max abs diff {worst:.3g} > {tolerance:g} "
            f"(per case: {[c['max_abs_diff'] for c in cases]}); nothing was written"
        )
    return report


def save_report(report: dict, directory: Path) -> Path:
    path = Path(directory) / PARITY_FILE
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
