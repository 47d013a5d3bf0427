"""Reduced-precision variants of the fp32 graph, each scored against fp32 on a held-out batch.

- ``fp16``: ``onnxruntime.transformers.float16`` (fp32 inputs/outputs kept); meant for GPUs.
- ``int8``: ONNX Runtime dynamic quantisation of MatMul / Gemm (int8 weights, per-channel, dynamic activations);
  convolutions (the audio front end) stay fp32.
- ``bf16``: OpenVINO on a CPU with AMX / AVX512-BF16 (``INFERENCE_PRECISION_HINT=bf16``). The artifact is
  the fp32 ``model.onnx`` itself: the precision is a runtime hint, so the variant entry names that file with
  ``engine="openvino"``, ``precision="bf16"`` and the server's OpenVINO engine applies the hint. Only offered
  where OpenVINO reports BF16 support.

- ``ov-int8``: NNCF post-training static quantisation of the OpenVINO model (int8 weights and activations,
  the Transformer preset: VNNI / AMX-int8 kernels), calibrated on real inputs run through the model's own
  preprocessing (``export.calibration_data``: the bundled sample data by default) and scored on held-out
  real inputs as well as the synthetic held-out batch. An OpenVINO IR file (``engine="openvino"``).

fp16 / int8 are ONNX Runtime files (``engine="onnxruntime"`` in model.json).

A variant whose worst pooled-embedding cosine vs fp32 is under its bar (fp16/bf16 0.999, int8 0.99) is
refused with ``VariantRefused``: the export fails and nothing is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d2v.core.contract import pooled_cosine
from d2v.core.errors import ConfigError, UnprocessableInput
from d2v.export.onnx_files import save_with_external_data

log = logging.getLogger(__name__)

VARIANTS = ("fp16", "int8", "bf16", "ov-int8")
COSINE_BARS = {"fp16": 0.999, "bf16": 0.999, "int8": 0.99, "ov-int8": 0.99}
VARIANT_FILES = {
    "fp32": "model.onnx",
    "fp16": "model.fp16.onnx",
    "int8": "model.int8.onnx",
    "bf16": "model.onnx",
    "ov-int8": "model.ov-int8.xml",  # OpenVINO IR (+ .bin)
}
PRECISIONS = {"fp16": "fp16", "int8": "int8", "bf16": "bf16", "ov-int8": "int8"}

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class VariantRefused(UnprocessableInput):
    default_code = "variant_refused"


class VariantUnsupported(ConfigError):
    default_code = "variant_unsupported"


def parse_variants(text: str | None) -> list[str]:
    if not text:
        return []
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------- runners
def ort_runner(path: Path, outputs: list[str], threads: int = 0) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(outputs, feeds), strict=True))

    run.session = session  # type: ignore[attr-defined]
    return run


def cpu_has_bf16() -> bool:
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


def openvino_runner(path: Path, outputs: list[str], precision: str = "bf16", threads: int = 0) -> Runner:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    ports = {o.get_any_name(): o for o in compiled.outputs}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = request.infer(feeds)
        return {n: np.asarray(result[ports[n]]) for n in outputs}

    return run


# -------------------------------------------------------------------------------------------- builders
def build_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src), load_external_data=True)
    model16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(model16)
    wrapped.topological_sort()  # the inserted input casts land after their consumers
    _save(wrapped.model, dst)


def build_int8(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        # The Transformer's projections only: dynamic int8 convolutions (the audio feature encoder) ran
        # slower than fp32 on AVX-512 CPUs (docs/platform_facts.md: 6.2 vs 11.0 clips/s on audio base).
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    model = onnx.load(str(dst), load_external_data=True)
    _save(model, dst)


def build_ov_int8(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> None:
    """Static int8 with NNCF (``ModelType.TRANSFORMER``: smooth-quant, attention-aware placement)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(src))
    # The Transformer's MatMuls only, as for ONNX Runtime int8: the audio feature encoder's convolutions lose
    # most under int8 (tiny audio: pooled cosine 0.981 with them, measured) and are a small share of the time.
    convolutions = nncf.IgnoredScope(types=["Convolution", "GroupConvolution"], validate=False)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
        ignored_scope=convolutions,
    )
    ov.save_model(quantized, str(dst))


def _save(model, dst: Path) -> None:
    import onnx

    save_with_external_data(model, dst)
    onnx.checker.check_model(str(dst))


# ------------------------------------------------------------------------------------------------ score
@dataclass
class VariantResult:
    name: str
    file: str
    engine: str  # "onnxruntime" | "openvino": the engine the variant is built for (model.json ``engine``)
    cosine_vs_fp32: float
    bar: float
    seconds_per_batch: float = 0.0
    notes: dict = field(default_factory=dict)

    @property
    def precision(self) -> str:
        return PRECISIONS[self.name]

    def as_variant(self):
        """The model.json entry."""
        from d2v.core.manifest import Variant

        return Variant(self.file, self.cosine_vs_fp32, engine=self.engine, precision=self.precision)

    def as_dict(self) -> dict:
        return {
            "file": self.file,
            "engine": self.engine,
            "precision": self.precision,
            "cosine_vs_fp32": self.cosine_vs_fp32,
            "bar": self.bar,
            "seconds_per_batch": self.seconds_per_batch,
            **self.notes,
        }


def time_runner(run: Runner, feeds: dict[str, np.ndarray], repeats: int = 5) -> float:
    run(feeds)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(feeds)
        best = min(best, time.perf_counter() - start)
    return best


def make_variant(
    name: str,
    fp32_path: Path,
    out_dir: Path,
    outputs: list[str],
    heldout: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    *,
    bars: dict[str, float] | None = None,
    explicit: bool = True,
    threads: int = 0,
    calibration: Callable[[], tuple[list, list, dict]] | None = None,
) -> VariantResult | None:
    """Build, score and time one variant. ``None`` when the host cannot run it and it was not asked for.

    ``calibration`` (``ov-int8``) gives (calibration batches, held-out real batches, a description).
    """
    bar = (bars or {}).get(name, COSINE_BARS[name])
    built = _build(name, fp32_path, out_dir, outputs, threads=threads, explicit=explicit, calibration=calibration)
    if built is None:
        return None
    run, engine, file, notes = built
    got = run(heldout)
    cos = min(pooled_cosine(reference, got), notes.get("cosine_heldout_real", 1.0))
    if not cos >= bar:
        for leftover in _files_of(out_dir, name):
            leftover.unlink()
        raise VariantRefused(
            f"variant {name} refused: worst pooled-embedding cosine vs fp32 on the held-out batch is {cos:.6f}, "
            f"below the bar {bar}; export aborted, nothing written (drop it from --variants)"
        )
    seconds = time_runner(run, heldout)
    log.info("variant %s: cosine %.6f (bar %s), %.4f s/batch (%s)", name, cos, bar, seconds, engine)
    notes = {"precision_hint": "bf16"} if name == "bf16" else notes
    return VariantResult(name, file, engine, cos, bar, seconds, notes)


def _build(
    name: str, fp32_path: Path, out_dir: Path, outputs: list[str], *, threads: int, explicit: bool, calibration
) -> tuple[Runner, str, str, dict] | None:
    """Write the variant's file (if it has one) and return (runner, engine, file, report notes)."""
    if name == "bf16":
        if not cpu_has_bf16():
            msg = "bf16 needs a CPU with AMX or AVX512-BF16 (OpenVINO reports no BF16 capability here)"
            if explicit:
                raise VariantUnsupported(msg)
            log.warning("skipping bf16: %s", msg)
            return None
        return openvino_runner(fp32_path, outputs, "bf16", threads), "openvino", fp32_path.name, {}
    dst = out_dir / VARIANT_FILES[name]
    if name == "ov-int8":
        import importlib.util

        if importlib.util.find_spec("nncf") is None or importlib.util.find_spec("openvino") is None:
            msg = "ov-int8 needs nncf and openvino (pip install 'data2vec-stack[export]')"
            if explicit:
                raise VariantUnsupported(msg)
            log.warning("skipping ov-int8: %s", msg)
            return None
        calib, held, notes = calibration()
        build_ov_int8(fp32_path, dst, calib)
        run, fp32 = openvino_runner(dst, outputs, "f32", threads), ort_runner(fp32_path, outputs, threads)
        notes["cosine_heldout_real"] = min(pooled_cosine(fp32(batch), run(batch)) for batch in held)
        return run, "openvino", dst.name, notes
    (build_fp16 if name == "fp16" else build_int8)(fp32_path, dst)
    return ort_runner(dst, outputs, threads), "onnxruntime", dst.name, {}


def _files_of(out_dir: Path, name: str) -> list[Path]:
    """The files a refused variant leaves behind (bf16 writes none: it is the fp32 graph plus a hint)."""
    if name == "bf16":
        return []
    main = out_dir / VARIANT_FILES[name]
    companions = [main.with_suffix(".bin")] if main.suffix == ".xml" else [out_dir / (main.name + ".data")]
    return [p for p in (main, *companions) if p.exists()]
