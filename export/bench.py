"""``d2v bench export``: every engine/variant of one exported model on the same batch, in one run.

Throughput is reported as a ratio to fp32 ONNX Runtime measured in the same process (absolute numbers
drift between machines), with the worst pooled-embedding cosine vs fp32 next to it.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from d2v.core.contract import InputSpec, feeds, pooled_cosine, synthetic_inputs
from d2v.core.manifest import ModelManifest
from d2v.export.variants import cpu_has_bf16, openvino_runner, ort_runner


def _inputs(m: ModelManifest, model_dir: Path, batch: int, length: int, seconds: float) -> dict[str, np.ndarray]:
    vocab = 0
    if m.modality == "text":
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(model_dir / m.preprocessing["tokenizer_file"])).get_vocab_size()
    spec = InputSpec.from_manifest(m, vocab_size=vocab)
    lengths = {"text": length, "audio": int(seconds * spec.sample_rate), "image": 1}[m.modality]
    return feeds(m, synthetic_inputs(spec, [lengths] * batch, seed=7))


def _throughput(run, feeds, batch: int, repeats: int) -> tuple[float, dict]:
    out = run(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times)), out


def bench_export(model_dir, *, batch=8, length=128, seconds=2.0, threads=0, repeats=10) -> dict:
    model_dir = Path(model_dir)
    m = ModelManifest.load(model_dir)
    feeds = _inputs(m, model_dir, batch, length, seconds)
    outputs = list(m.outputs)
    engines: list[tuple[str, object]] = [
        ("onnxruntime fp32", lambda: ort_runner(model_dir / "model.onnx", outputs, threads))
    ]
    for name, v in m.variants.items():
        if name != "fp32" and v.file != "model.onnx":
            engines.append((f"onnxruntime {name}", lambda f=v.file: ort_runner(model_dir / f, outputs, threads)))
    engines.append(("openvino fp32", lambda: openvino_runner(model_dir / "model.onnx", outputs, "f32", threads)))
    if cpu_has_bf16():
        engines.append(("openvino bf16", lambda: openvino_runner(model_dir / "model.onnx", outputs, "bf16", threads)))
    rows, reference, base = [], None, None
    for label, make in engines:
        try:
            rate, out = _throughput(make(), feeds, batch, repeats)
        except Exception as exc:  # an engine this host cannot run: report, keep going
            rows.append({"engine": label, "error": str(exc)[:200]})
            continue
        if reference is None:
            reference, base = out, rate
        rows.append(
            {
                "engine": label,
                "items_per_s": rate,
                "ratio_vs_fp32_ort": rate / base,
                "min_cosine_vs_fp32": pooled_cosine(reference, out),
            }
        )
    shape = {k: list(v.shape) for k, v in feeds.items()}
    return {"model": m.name, "modality": m.modality, "inputs": shape, "threads": threads,
            "machine": platform.processor() or platform.machine(), "results": rows}  # fmt: skip


def format_table(result: dict) -> str:
    lines = [f"{result['model']} ({result['modality']}) inputs {result['inputs']}",
             f"{'engine':<26}{'items/s':>10}{'x fp32 ORT':>12}{'min cos':>10}"]  # fmt: skip
    for r in result["results"]:
        if "error" in r:
            lines.append(f"{r['engine']:<26}  error: {r['error']}")
        else:
            lines.append(
                f"{r['engine']:<26}{r['items_per_s']:>10.1f}{r['ratio_vs_fp32_ort']:>12.2f}{r['min_cosine_vs_fp32']:>10.5f}"
            )
    return "\n".join(lines)
