"""``d2v bench peers``: the project's engines against Hugging Face transformers on the same weights, one run.

Per modality (text, audio, image):

1. A random-weight ``Data2Vec{Text,Audio,Vision}Model`` is built offline from a config (``--size base``: the
   released base layouts; ``tiny``: test-sized), saved with ``save_pretrained``, converted with
   ``d2v convert hf`` (:func:`d2v.models.convert.hf.convert_hf`) and exported with every variant this host runs
   (:func:`d2v.export.exporter.export_onnx`, which also records the calibration ``--engine auto`` reads).
2. One batch shaped like the platform workloads (text 16 x 128 tokens, audio 8 x 2 s, image 16 x 224 px) is
   fed, as the very same tensors, to HF (fp32 eager and bf16 autocast), to every (engine, variant) of
   :func:`d2v.runtime.selection.candidates` and to the ``auto`` choice.
3. Cosine is the worst row's cosine of the served pooled embedding against a reference computed here,
   independently of ``d2v.models.embedding``, from HF's hidden states: the top-K block outputs, each layer
   normalised per token without parameters, averaged, masked mean over real tokens (image: patches only).
4. Optionally the gateway end to end (:func:`d2v.server.bench.bench_serve`, auto engine, 16 concurrent
   clients x 8 items per request); its ratio is against HF on the same 8 preprocessed items per call.

Speed is a ratio against HF's best CPU configuration measured in the same run (the faster of fp32 eager and
bf16 autocast). A benchmark, never a test: nothing here asserts speed. torch / transformers are imported
inside the functions that need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from d2v.core.contract import MEAN_OUTPUT, InputSpec, feeds, synthetic_inputs, worst_cosine
from d2v.workflows.bench_peers_hf import build_hf, hf_feeds, hf_pooled
from d2v.workflows.bench_peers_report import write_outputs

log = logging.getLogger(__name__)

MODALITIES = ("text", "audio", "image")
SIZES = ("tiny", "base")
HF_FP32, HF_BF16 = "fp32 eager", "bf16 autocast"
GATEWAY_CONCURRENCY = 16
GATEWAY_ITEMS = 8

# (batch, length): text tokens per row, audio seconds per clip, image: the model's image size.
WORKLOADS: dict[str, dict[str, tuple[int, float]]] = {
    "base": {"text": (16, 128), "audio": (8, 2.0), "image": (16, 224)},
    "tiny": {"text": (4, 32), "audio": (2, 0.5), "image": (4, 32)},
}


@dataclass
class PeersOptions:
    size: str = "base"
    modalities: tuple[str, ...] = MODALITIES
    repeats: int = 5
    threads: int = 0  # 0: all cores
    out: Path = Path("bench-peers")
    gateway: bool = True
    gateway_requests: int = 200
    gateway_duration_s: float = 20.0
    gateway_modalities: tuple[str, ...] = MODALITIES  # of ``modalities``, those that also get a gateway run
    calibration_budget_s: float | None = None  # None: the project's defaults (export and ``--engine auto``)
    seed: int = 0
    progress: bool = True
    work_dir: Path | None = None  # where models are built (default: a temporary directory)
    docs: Path | None = None  # regenerate the marked section of this Markdown file
    notes: list[str] = field(default_factory=list)

    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def build_export(modality: str, size: str, root: Path, opts: PeersOptions, caps) -> tuple[Any, Any, Path, list[str]]:
    """HF model -> ``d2v convert hf`` -> ``d2v export`` (every variant this host runs). Returns
    ``(hf_model, manifest, model_dir, notes)``."""
    from d2v.export.exporter import ExportOptions, export_onnx
    from d2v.export.variants import VARIANTS, VariantRefused
    from d2v.models.convert.hf import convert_hf

    src, ckpt, out = root / f"hf-{modality}", root / f"ckpt-{modality}", root / "store" / f"peers-{modality}-{size}"
    hf = build_hf(modality, size, src, opts.seed)
    convert_hf(src, ckpt)
    variants = [v for v in VARIANTS if v != "fp16" or caps.cuda]  # every variant the project has; fp16 is for GPUs
    notes: list[str] = []
    while True:
        eopts = ExportOptions(
            variants=variants,
            variants_explicit=False,  # bf16 only where the CPU has BF16
            threads=opts.resolved_threads(),
            overwrite=True,
            **({} if opts.calibration_budget_s is None else {"calibration_budget_s": opts.calibration_budget_s}),
        )
        try:
            manifest = export_onnx(ckpt, out, eopts)
            return hf, manifest, out, notes
        except VariantRefused as exc:  # a variant under its cosine bar: report it, export without it
            refused = next((v for v in variants if f"variant {v} " in exc.message), None)
            if refused is None:
                raise
            notes.append(f"{modality}: {exc.message.split(';')[0]}")
            variants = [v for v in variants if v != refused]


# --------------------------------------------------------------------------------------------- inputs
def bench_inputs(manifest, hf_cfg, size: str) -> dict[str, np.ndarray]:
    """The benchmark batch (ONNX feeds; HF gets the same tensors minus ``d2v_top_k``)."""
    modality = manifest.modality
    batch, length = WORKLOADS[size][modality]
    spec = InputSpec.from_manifest(manifest, vocab_size=getattr(hf_cfg, "vocab_size", 0))
    if modality == "text":
        longest = min(int(length), spec.max_tokens)
        # tiny: ragged rows, so the masked mean is exercised; base: full rows as in the platform workloads
        lengths = [max(3, longest - 5 * i) for i in range(batch)] if size == "tiny" else [longest] * batch
    elif modality == "audio":
        lengths = [int(length * spec.sample_rate)] * batch  # unpadded: HF leaks padding into real frames
    else:
        lengths = [1] * batch
    return feeds(manifest, synthetic_inputs(spec, lengths, seed=7))


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """One uncounted warm-up call (its output is returned), then the median of ``repeats`` calls in seconds."""
    out = call()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


async def timed_async(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """:func:`timed` for a coroutine function (an engine's ``embed``)."""
    out = await call()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


# ------------------------------------------------------------------------------------------- measuring
def _row(kind: str, engine: str, variant: str, precision: str, batch: int, seconds: float, cosine: float | None):
    return {
        "kind": kind,  # hf | engine | auto | gateway
        "engine": engine,
        "variant": variant,
        "precision": precision,
        "items_per_s": batch / seconds if seconds > 0 else 0.0,
        "cosine": cosine,
    }


def _label(row: dict[str, Any]) -> str:
    if row["kind"] == "hf":
        return f"HF transformers {row['variant']}"
    if row["kind"] == "auto":
        return f"auto -> {row['engine']} {row['variant']}"
    if row["kind"] == "gateway":
        return (
            f"gateway (auto -> {row['engine']} {row['variant']}), {row['concurrency']} clients x {row['items']} items"
        )
    name = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}.get(row["engine"], row["engine"])
    extra = f" ({row['precision']})" if row["precision"] not in (row["variant"], "fp32") else ""
    return f"{name} {row['variant']}{extra}"


def _hf_rows(hf, modality: str, inputs: dict[str, Any], top_k: int, batch: int, repeats: int, step) -> tuple:
    """HF fp32 eager and bf16 autocast; returns ``(rows, reference)`` (the fp32 pooled output)."""
    seconds, reference = timed(lambda: hf_pooled(hf, modality, inputs, top_k), repeats)
    rows = [_row("hf", "transformers", HF_FP32, "fp32", batch, seconds, 1.0)]
    step()
    seconds, got = timed(lambda: hf_pooled(hf, modality, inputs, top_k, bf16=True), repeats)
    rows.append(_row("hf", "transformers", HF_BF16, "bf16", batch, seconds, worst_cosine(reference, got)))
    step()
    return rows, reference


def _engine_config(engine: str, variant: str | None, precision: str, threads: int, budget_s: float | None = None):
    from d2v.runtime.engines import EngineConfig

    ov = "bf16" if precision == "bf16" else "f32"
    budget = {} if budget_s is None else {"calibration_budget_s": budget_s}
    return EngineConfig(engine=engine, variant=variant, intra_op_threads=threads, openvino_precision=ov, **budget)


async def _engine_rows(manifest, model_dir: Path, cands, feeds_: dict, reference, batch: int, opts, step):
    """Every candidate (engine, variant), then ``auto`` (built the way the server builds it)."""
    from d2v.runtime.engines import build_engine

    threads = opts.resolved_threads()
    rows = []
    plan = [("engine", c.engine, c.variant, c.precision) for c in cands] + [("auto", "auto", None, "")]
    selection = None
    for kind, engine_name, variant, precision in plan:
        config = _engine_config(engine_name, variant, precision, threads, opts.calibration_budget_s)
        engine = build_engine(manifest, model_dir, config)
        await engine.load()
        try:
            seconds, out = await timed_async(lambda engine=engine: engine.embed(feeds_, [MEAN_OUTPUT]), opts.repeats)
            if kind == "auto":
                selection = engine.selection
                engine_name, variant = engine.describe()["engine"], engine.describe()["variant"]
                precision = selection["precision"] if selection else ""
            rows.append(
                _row(kind, engine_name, variant, precision, batch, seconds, worst_cosine(reference, out[MEAN_OUTPUT]))
            )
        finally:
            await engine.close()
        step()
    return rows, selection


def _gateway(manifest, model_dir: Path, hf, chosen: dict, opts: PeersOptions, step) -> tuple[dict, dict]:
    """The gateway end to end with the auto choice (resolved once, by the ``auto`` row), plus HF and that
    engine called directly on the same 8 preprocessed items (the gateway row's peer and cosine)."""
    from d2v.models.preprocessing import build_preprocessor
    from d2v.runtime.engines import build_engine
    from d2v.server.bench import bench_serve, sample_inputs
    from d2v.server.settings import ServerSettings

    threads = opts.resolved_threads()
    pre = build_preprocessor(manifest.preprocessing, model_dir)
    raws = sample_inputs(manifest.modality, manifest.preprocessing, GATEWAY_ITEMS)
    arrays = feeds(manifest, pre.collate([pre.load_item(r) for r in raws]))
    inputs = hf_feeds(manifest.modality, arrays)
    fp32_s, reference = timed(lambda: hf_pooled(hf, manifest.modality, inputs, manifest.top_k), opts.repeats)
    bf16_s, _ = timed(lambda: hf_pooled(hf, manifest.modality, inputs, manifest.top_k, bf16=True), opts.repeats)
    peer_name, peer_s = min(((HF_FP32, fp32_s), (HF_BF16, bf16_s)), key=lambda p: p[1])
    config = _engine_config(chosen["engine"], chosen["variant"], chosen["precision"], threads)

    async def served() -> np.ndarray:
        engine = build_engine(manifest, model_dir, config)
        await engine.load()
        try:
            return (await engine.embed(arrays, [MEAN_OUTPUT]))[MEAN_OUTPUT]
        finally:
            await engine.close()

    cosine = worst_cosine(reference, asyncio.run(served()))
    # The concrete engine, variant and OpenVINO precision of the auto choice: the gateway runs exactly what
    # the auto row measured (with ``engine="auto"`` every start could measure and choose again).
    settings = ServerSettings(
        store=model_dir.parent,
        models=[str(model_dir)],
        engine=config.engine,
        variant=config.variant,
        openvino_precision=config.openvino_precision,
        intra_op_threads=threads,
    )
    result = bench_serve(
        settings,
        requests=opts.gateway_requests,
        concurrency=GATEWAY_CONCURRENCY,
        items=GATEWAY_ITEMS,
        duration_s=opts.gateway_duration_s,
    )
    step()
    row = _row("gateway", chosen["engine"], chosen["variant"], chosen["precision"], 1, 1.0, cosine)
    row["items_per_s"] = result["gateway"]["requests_per_s"] * GATEWAY_ITEMS
    row.update(
        concurrency=GATEWAY_CONCURRENCY,
        items=GATEWAY_ITEMS,
        errors=result["gateway"]["errors"],
        peer=peer_name,
        peer_items_per_s=GATEWAY_ITEMS / peer_s,
        engine_items_per_s=result["engine"]["requests_per_s"] * GATEWAY_ITEMS,
        inputs={k: list(v.shape) for k, v in arrays.items()},
    )
    row["ratio_vs_peer"] = row["items_per_s"] / row["peer_items_per_s"]
    return row, result


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "onnxruntime", "openvino"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def bench_modality(modality: str, root: Path, opts: PeersOptions, caps, bar) -> dict[str, Any]:
    import torch

    from d2v.runtime import selection

    def step(n: int = 1) -> None:
        bar.update(n)

    threads = opts.resolved_threads()
    torch.set_num_threads(threads)
    bar.set_postfix_str(f"{modality}: build + export")
    hf, manifest, model_dir, notes = build_export(modality, opts.size, root, opts, caps)
    cands = selection.candidates(manifest, caps)
    bar.total += len(cands) + 1
    bar.refresh()
    step()
    arrays = bench_inputs(manifest, hf.config, opts.size)
    batch = next(iter(arrays.values())).shape[0]
    inputs = hf_feeds(modality, arrays)
    bar.set_postfix_str(f"{modality}: HF")
    rows, reference = _hf_rows(hf, modality, inputs, manifest.top_k, batch, opts.repeats, step)
    bar.set_postfix_str(f"{modality}: engines")
    engine_rows, chosen = asyncio.run(_engine_rows(manifest, model_dir, cands, arrays, reference, batch, opts, step))
    rows += engine_rows
    peer = max((r for r in rows if r["kind"] == "hf"), key=lambda r: r["items_per_s"])
    for r in rows:
        r["peer"] = peer["variant"]
        r["peer_items_per_s"] = peer["items_per_s"]
        r["ratio_vs_peer"] = r["items_per_s"] / peer["items_per_s"]
    gateway = None
    if opts.gateway and modality in opts.gateway_modalities:
        bar.set_postfix_str(f"{modality}: gateway")
        auto = next(r for r in rows if r["kind"] == "auto")
        row, gateway = _gateway(manifest, model_dir, hf, auto, opts, step)
        rows.append(row)
    for r in rows:
        r["label"] = _label(r)
    workload_batch, length = WORKLOADS[opts.size][modality]
    return {
        "model": {
            "hf_class": type(hf).__name__,
            "hidden_size": hf.config.hidden_size,
            "layers": hf.config.num_hidden_layers,
            "top_k": manifest.top_k,
            "attn_implementation": getattr(hf.config, "_attn_implementation", None),
            "variants": list(manifest.variants),
        },
        "workload": _workload_text(modality, arrays),
        "inputs": {k: list(v.shape) for k, v in arrays.items()},
        "peer": peer["variant"],
        "peer_items_per_s": peer["items_per_s"],
        "selection": chosen,
        "rows": rows,
        "gateway": gateway,
        "notes": notes,
    }


def _workload_text(modality: str, arrays: dict[str, np.ndarray]) -> str:
    if modality == "text":
        b, t = arrays["input_ids"].shape
        return f"text b{b} x {t} tokens"
    if modality == "audio":
        b, s = arrays["input_values"].shape
        return f"audio b{b} x {s / 16000:g} s"
    b, _, h, _ = arrays["pixel_values"].shape
    return f"image b{b} x {h} px"


def run_peers(opts: PeersOptions) -> dict[str, Any]:
    """Measure every modality, write ``peers.json``, ``peers.md`` and ``peers.png`` under ``opts.out`` (and
    the marked section of ``opts.docs``); return the result."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from tqdm import tqdm

    from d2v.core.errors import ConfigError
    from d2v.runtime.selection import detect_capabilities, host_fingerprint

    if opts.size not in SIZES or not opts.modalities or set(opts.modalities) - set(MODALITIES):
        raise ConfigError(f"--size must be one of {SIZES} and --modalities a subset of {MODALITIES}")
    if opts.repeats < 1:
        raise ConfigError("--repeats must be >= 1")
    caps = detect_capabilities()
    start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "peers",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": opts.size,
        "threads": opts.resolved_threads(),
        "repeats": opts.repeats,
        "host": host_fingerprint(),
        "capabilities": {k: getattr(caps, k) for k in ("onnxruntime", "openvino", "bf16", "cuda")},
        "versions": _versions(),
        "modalities": {},
    }
    # export, HF fp32, HF bf16 (+ gateway) per modality; the engines are added once the export says which
    total = 3 * len(opts.modalities) + (len(set(opts.modalities) & set(opts.gateway_modalities)) if opts.gateway else 0)
    with tempfile.TemporaryDirectory(prefix="d2v-peers-") as tmp:
        root = Path(opts.work_dir or tmp)
        with tqdm(total=total, desc="bench peers", disable=not opts.progress) as bar:
            for modality in opts.modalities:
                result["modalities"][modality] = bench_modality(modality, root, opts, caps, bar)
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_outputs(result, opts.out, docs=opts.docs)
    return result
