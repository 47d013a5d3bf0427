"""``--engine auto``: the fastest (engine, variant) this host runs whose embeddings stay within a cosine bar.

The choice is made from measurements, never from a table of expectations:

1. **Candidates**: every (engine, variant) of ``model.json`` that an installed engine can run on this host:
   ONNX Runtime for the ONNX files (fp32, int8, optimized; fp16 only where CUDA is available), OpenVINO for
   the fp32 graph (f32), the NNCF int8 IR (ov-int8) and, where OpenVINO reports BF16, the bf16 variant. A
   missing capability simply removes candidates, so a CPU without BF16 (or a host without OpenVINO) falls
   back to what it has.
2. **Measurements** (items/s and the worst pooled cosine against ONNX Runtime fp32 on the same batch), taken
   on one synthetic batch shaped like traffic, within a time budget (default 10 s per model). ``d2v export``
   records them in ``model.json`` (``calibration``) with the host's CPU fingerprint; a server on a host with
   that fingerprint reuses them, any other host measures again and caches the result next to the model
   (``calibration/<fingerprint>.json``, or under ``$D2V_HOME/cache/calibration`` when the store is
   read-only), keyed by the manifest's sha256.
3. **Choice**: the fastest candidate whose cosine (the lower of the measured one and the export's held-out
   one) meets ``min_cosine``; fp32 ONNX Runtime always qualifies, so there is always a choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from d2v.core.config import from_dict
from d2v.core.contract import InputSpec, feeds, output_names, pooled_cosine, synthetic_inputs
from d2v.core.errors import ConfigError
from d2v.core.files import sha256_file
from d2v.core.manifest import MANIFEST_FILE, ModelManifest
from d2v.core.paths import default_cache

log = logging.getLogger(__name__)

# The CPU features that change which kernels (and so which engine/precision) are fastest.
FEATURE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
CALIBRATION_DIR = "calibration"
REFERENCE = ("onnxruntime", "fp32")


@dataclass(frozen=True)
class Capabilities:
    """What this host can run; tests force one off to check the fallback."""

    onnxruntime: bool = True
    openvino: bool = False
    bf16: bool = False  # OpenVINO reports BF16 (AMX or AVX512-BF16)
    cuda: bool = False  # ONNX Runtime has the CUDA provider


def detect_capabilities() -> Capabilities:
    def has(module: str) -> bool:
        import importlib.util

        return importlib.util.find_spec(module) is not None

    openvino = has("openvino")
    bf16 = False
    if openvino:
        import openvino as ov

        bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    cuda = False
    if has("onnxruntime"):
        import onnxruntime as ort

        cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    return Capabilities(onnxruntime=has("onnxruntime"), openvino=openvino, bf16=bf16, cuda=cuda)


def host_fingerprint() -> dict[str, Any]:
    """The CPU model and the feature flags that decide kernel speed (Linux ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu": model, "flags": [f for f in FEATURE_FLAGS if f in flags], "machine": platform.machine()}


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Candidate:
    engine: str  # "onnxruntime" | "openvino"
    variant: str  # the model.json variant name
    precision: str  # what it computes in: fp32 / fp16 / int8 (ORT files), f32 / bf16 (OpenVINO hint)


@dataclass
class Measurement:
    engine: str
    variant: str
    precision: str
    items_per_s: float
    cosine: float  # worst pooled cosine vs ONNX Runtime fp32 on the calibration batch


@dataclass
class Calibration:
    """What one host measured for one model (stored in model.json and in the cache)."""

    fingerprint: dict[str, Any]
    batch: dict[str, Any]
    measurements: list[Measurement]
    seconds: float
    skipped: list[str] = field(default_factory=list)  # candidates the budget left unmeasured


@dataclass
class Selection:
    engine: str
    variant: str
    precision: str
    items_per_s: float
    cosine: float
    min_cosine: float
    source: str  # "export" (model.json, same host), "cache" or "calibration" (measured at start)
    fingerprint: str
    candidates: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reason(self) -> str:
        others = ", ".join(
            f"{c['engine']}/{c['variant']} {c['items_per_s']:.1f}/s cos {c['cosine']:.5f}"
            for c in self.candidates
            if (c["engine"], c["variant"]) != (self.engine, self.variant)
        )
        return (
            f"{self.engine}/{self.variant} ({self.precision}): {self.items_per_s:.1f} items/s, cosine "
            f"{self.cosine:.5f} >= {self.min_cosine} [{self.source}]" + (f"; others: {others}" if others else "")
        )


def candidates(manifest: ModelManifest, caps: Capabilities) -> list[Candidate]:
    """Every (engine, variant) this host can run; ONNX Runtime fp32 first (the reference)."""
    found: list[Candidate] = []
    for name, v in manifest.variants.items():
        if caps.onnxruntime and v.engine in (None, "onnxruntime") and (v.precision != "fp16" or caps.cuda):
            found.append(Candidate("onnxruntime", name, v.precision))
        if caps.openvino and v.engine in (None, "openvino"):
            if v.precision == "bf16" and not caps.bf16:
                continue
            if v.precision == "fp32":
                found.append(Candidate("openvino", name, "f32"))
            elif v.precision in ("bf16", "int8") and v.engine == "openvino":  # the hint; an NNCF int8 IR
                found.append(Candidate("openvino", name, v.precision))
    found.sort(key=lambda c: (c.engine, c.variant) != REFERENCE)
    return found


# ------------------------------------------------------------------------------------------- measuring
def calibration_batch(manifest: ModelManifest, model_dir: Path, batch: int = 8) -> dict[str, np.ndarray]:
    """One synthetic batch like traffic: 128-token texts (ids over the real vocabulary), 2 s clips, images."""
    vocab = 0
    if manifest.modality == "text":
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(model_dir / manifest.preprocessing["tokenizer_file"])).get_vocab_size()
    spec = InputSpec.from_manifest(manifest, vocab_size=vocab)
    length = {"text": min(128, spec.max_tokens), "audio": 2 * spec.sample_rate, "image": 1}[manifest.modality]
    return feeds(manifest, synthetic_inputs(spec, [length] * batch, seed=11))


def _engine(manifest: ModelManifest, model_dir: Path, cand: Candidate, threads: int):
    if cand.engine == "openvino":
        from .engines.openvino import OpenVinoEngine

        hint = "bf16" if cand.precision == "bf16" else "f32"  # an int8 IR keeps its other ops in f32
        return OpenVinoEngine(manifest, model_dir, variant=cand.variant, precision=hint, intra_op_threads=threads)
    from .engines.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(manifest, model_dir, variant=cand.variant, intra_op_threads=threads)


def measure(
    manifest: ModelManifest,
    model_dir: Path,
    cands: list[Candidate],
    *,
    budget_s: float = 10.0,
    threads: int = 0,
    batch: int = 8,
) -> Calibration:
    """Time each candidate on one batch and score its pooled cosine against the first (ONNX Runtime fp32).

    Each candidate gets an equal share of ``budget_s``, its loading included: at least one timed run after a
    warm-up, more while its share lasts (at most 50). Candidates reached after the budget is spent are
    listed in ``skipped`` (the reference is always measured)."""
    start = time.perf_counter()
    inputs = calibration_batch(manifest, Path(model_dir), batch)
    outputs = list(output_names(manifest.modality))
    share = budget_s / max(1, len(cands))
    results: list[Measurement] = []
    skipped: list[str] = []
    reference: dict[str, np.ndarray] | None = None
    for cand in cands:
        if results and time.perf_counter() - start > budget_s:
            skipped.append(f"{cand.engine}/{cand.variant}")
            continue
        deadline = time.perf_counter() + share
        engine = _engine(manifest, Path(model_dir), cand, threads)
        engine._load_sync()
        got = engine._run_sync(inputs, outputs)  # warm-up, and the output scored
        reference = got if reference is None else reference
        times: list[float] = []
        while not times or (time.perf_counter() < deadline and len(times) < 50):
            t0 = time.perf_counter()
            engine._run_sync(inputs, outputs)
            times.append(time.perf_counter() - t0)
        rate = batch / float(np.median(times))
        results.append(Measurement(cand.engine, cand.variant, cand.precision, rate, pooled_cosine(reference, got)))
    fingerprint = host_fingerprint()
    seconds = time.perf_counter() - start
    shape = {k: list(v.shape) for k, v in inputs.items()}
    return Calibration(fingerprint, {"inputs": shape, "threads": threads}, results, round(seconds, 2), skipped)


def by_promise(cands: list[Candidate], prior: Calibration | None) -> list[Candidate]:
    """The reference first, then the candidates most likely to win, so a short budget measures those: by a
    prior calibration's items/s (another host's ranking is still a good guess), else bf16, int8, f32."""
    rates = {(m.engine, m.variant): m.items_per_s for m in prior.measurements} if prior else {}
    rank = {"bf16": 0, "int8": 1, "fp16": 2, "f32": 3, "fp32": 3}

    def key(c: Candidate) -> tuple:
        return ((c.engine, c.variant) != REFERENCE, -rates.get((c.engine, c.variant), 0.0), rank.get(c.precision, 4))

    return sorted(cands, key=key)


# -------------------------------------------------------------------------------------------- choosing
def choose(
    manifest: ModelManifest, cal: Calibration, min_cosine: float, source: str, variant: str | None = None
) -> Selection:
    """The fastest measured candidate whose cosine meets ``min_cosine`` (of ``variant`` only, when given: a
    variant asked for by name is served whatever its cosine, as with an explicit engine).

    The cosine that counts is the lower of the calibration's and the export's held-out figure
    (``variants.<name>.cosine_vs_fp32``), so neither a lucky batch nor a stale file can admit a variant.
    """
    rows = []
    for m in cal.measurements:
        recorded = manifest.variants[m.variant].cosine_vs_fp32 if m.variant in manifest.variants else None
        cosine = min(m.cosine, recorded) if recorded is not None else m.cosine
        ok = cosine >= min_cosine or (m.engine, m.variant) == REFERENCE
        rows.append({**asdict(m), "cosine": cosine, "eligible": ok if variant is None else m.variant == variant})
    eligible = [r for r in rows if r["eligible"]]
    best = max(eligible, key=lambda r: r["items_per_s"])
    return Selection(
        best["engine"],
        best["variant"],
        best["precision"],
        best["items_per_s"],
        best["cosine"],
        min_cosine,
        source,
        fingerprint_id(cal.fingerprint),
        rows,
    )


def _cache_paths(manifest: ModelManifest, model_dir: Path, fp_id: str) -> list[Path]:
    digest = sha256_file(Path(model_dir) / MANIFEST_FILE)[:12]
    name = f"{fp_id}-{digest}.json"
    return [Path(model_dir) / CALIBRATION_DIR / name, default_cache(CALIBRATION_DIR, manifest.name, name)]


def _read_cache(paths: list[Path]) -> Calibration | None:
    for path in paths:
        try:
            return from_dict(Calibration, json.loads(path.read_text()), where=str(path))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:  # a damaged cache file is re-measured, not fatal
            log.warning("ignoring calibration cache %s: %s", path, exc)
    return None


def _write_cache(paths: list[Path], cal: Calibration) -> None:
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(cal), indent=2) + "\n")
            tmp.replace(path)
            return
        except OSError as exc:
            log.info("cannot cache the calibration at %s (%s); trying the next place", path, exc)


def recorded_calibration(manifest: ModelManifest) -> Calibration | None:
    """The calibration ``d2v export`` stored in model.json, if any."""
    if not manifest.calibration:
        return None
    return from_dict(Calibration, manifest.calibration, where="model.json.calibration")


def select(
    manifest: ModelManifest,
    model_dir: Path,
    *,
    min_cosine: float = 0.999,
    budget_s: float = 10.0,
    threads: int = 0,
    variant: str | None = None,
    caps: Capabilities | None = None,
) -> Selection:
    """The ``auto`` choice for one model: reuse export's or the cache's measurements made on this host (with
    the same candidates), else measure within ``budget_s`` (most promising candidates first) and cache what
    was measured; a later start completes a partial cache. ``variant`` restricts the choice to the engines
    that run that variant (the fp32 reference is still measured, for the cosine)."""
    caps = caps or detect_capabilities()
    cands = candidates(manifest, caps)
    if variant is not None and not any(c.variant == variant for c in cands):
        raise ConfigError(
            f"model {manifest.name!r}: no engine on this host runs variant {variant!r}; runnable here: "
            f"{sorted({c.variant for c in cands})}"
        )
    wanted = {(c.engine, c.variant) for c in cands}
    fp = host_fingerprint()
    fp_id = fingerprint_id(fp)
    paths = _cache_paths(manifest, model_dir, fp_id)

    def on_this_host(cal: Calibration | None) -> bool:
        return cal is not None and fingerprint_id(cal.fingerprint) == fp_id and cal.batch.get("threads", 0) == threads

    def complete(cal: Calibration | None) -> bool:
        return on_this_host(cal) and {(m.engine, m.variant) for m in cal.measurements} == wanted

    recorded, cached = recorded_calibration(manifest), _read_cache(paths)
    for source, cal in (("export", recorded), ("cache", cached)):
        if complete(cal):
            return choose(manifest, cal, min_cosine, source, variant)
    # Measure what this host has not measured yet (a budget cut short last time: the rest now), the
    # reference again for the cosines, and keep what was measured before.
    kept = [m for m in cached.measurements if (m.engine, m.variant) in wanted] if on_this_host(cached) else []
    done = {(m.engine, m.variant) for m in kept} - {REFERENCE}
    todo = by_promise([c for c in cands if (c.engine, c.variant) not in done], recorded)
    cal = measure(manifest, model_dir, todo, budget_s=budget_s, threads=threads)
    new = {(m.engine, m.variant) for m in cal.measurements}
    cal.measurements = [m for m in kept if (m.engine, m.variant) not in new] + cal.measurements
    _write_cache(paths, cal)  # partial too: the next start measures only what is missing
    return choose(manifest, cal, min_cosine, "calibration", variant)
