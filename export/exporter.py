"""``d2v export``: checkpoint -> ONNX (+ parity, variants, fusions, manifest), atomically.

Everything is written to a temp dir beside ``OUT_DIR`` and renamed into place only when every check
passed, so a failed export (bad checkpoint, missing tokenizer, unsupported opset, parity failure, a
variant under its cosine bar) leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d2v.core.contract import INPUT_NAMES, TOP_K_INPUT, InputSpec, output_names, synthetic_inputs
from d2v.core.errors import ConfigError, NotFound
from d2v.core.files import replace_dir, sha256_file
from d2v.core.manifest import ModelManifest, TensorSpec, Variant
from d2v.export.onnx_export import DEFAULT_OPSET, EmbeddingGraph, GraphOptions, check_opset, export_graph, graph_io
from d2v.export.parity import check_parity, example_lengths, heldout_lengths, save_report
from d2v.export.variants import COSINE_BARS, VARIANT_FILES, VARIANTS, make_variant, ort_runner

log = logging.getLogger(__name__)

ONNX_FILE = VARIANT_FILES["fp32"]


@dataclass
class ExportOptions:
    name: str | None = None  # default: the output directory's name (a model store entry is named by its folder)
    top_k: int | None = None  # default: the checkpoint's embedding config
    norm: str | None = None
    pooling: str | None = None
    normalize: bool = False
    opset: int = DEFAULT_OPSET
    dynamic_top_k: bool = False
    variants: list[str] = field(default_factory=list)
    variants_explicit: bool = True  # False: skip variants the host cannot run instead of failing
    min_cosine: dict[str, float] = field(default_factory=dict)  # stricter (or looser) bars per variant
    optimize: bool = True
    dynamo: bool = True
    max_batch_size: int = 64
    threads: int = 0  # ORT / OpenVINO threads for the checks (0 = runtime default)
    overwrite: bool = False
    calibration_budget_s: float = 60.0  # time to measure every engine/variant for ``--engine auto`` (0: skip)
    calibration: str | None = None  # ov-int8: real inputs (directory or manifest); default: the sample data

    def validate(self) -> None:
        check_opset(self.opset, self.dynamo)
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
        for key, bar in self.min_cosine.items():
            if key not in COSINE_BARS or not 0.0 < bar <= 1.0:
                raise ConfigError(f"--min-cosine {key}={bar}: need a variant of {VARIANTS} and a bar in (0, 1]")
        if self.norm not in (None, "layer", "target") or self.pooling not in (None, "mean", "cls"):
            raise ConfigError("norm must be layer|target and pooling mean|cls")
        if self.max_batch_size < 1:
            raise ConfigError("max_batch_size must be >= 1")
        if self.name is not None and (not self.name or "/" in self.name):
            raise ConfigError(f"bad model name {self.name!r}")


def _load(checkpoint: Path):
    from d2v.models.checkpoint import WEIGHTS_FILE, load_checkpoint

    if not checkpoint.exists():
        raise NotFound(f"checkpoint not found: {checkpoint}")
    if not checkpoint.is_dir():
        raise ConfigError(f"checkpoint must be a directory (model.safetensors + config.json): {checkpoint}")
    ckpt = load_checkpoint(checkpoint)
    if ckpt.config.modality == "text":
        from d2v.models.preprocessing import build_preprocessor

        tok = checkpoint / ckpt.preprocessing.tokenizer_file
        if not tok.is_file():
            raise NotFound(
                f"text checkpoint {checkpoint} has no tokenizer file {ckpt.preprocessing.tokenizer_file!r}: "
                "the export ships the tokenizer, so it must be in the checkpoint"
            )
        build_preprocessor(ckpt.preprocessing, checkpoint)  # parses it: a broken file fails here
    return ckpt, sha256_file(checkpoint / WEIGHTS_FILE)


def _graph_options(ckpt, opts: ExportOptions) -> GraphOptions:
    depth = ckpt.config.transformer.depth
    top_k = opts.top_k if opts.top_k is not None else ckpt.embedding.top_k
    if not 1 <= top_k <= depth:
        raise ConfigError(f"--top-k {top_k} outside [1, {depth}] (the model has {depth} layers)")
    pooling = opts.pooling or ckpt.embedding.pooling
    if pooling == "cls" and ckpt.config.modality == "audio":
        raise ConfigError("audio models have no CLS token: use --pooling mean")
    return GraphOptions(top_k, opts.norm or ckpt.embedding.norm, pooling, opts.normalize, opts.dynamic_top_k)


@dataclass
class _Exported:
    """The fp32 graph as exported: the torch module, its ONNX file and the contract's names."""

    graph: EmbeddingGraph
    gopts: GraphOptions
    spec: InputSpec
    top_k_feed: dict[str, np.ndarray]  # ``d2v_top_k`` at the export's K where the graph takes it, else empty
    onnx_path: Path
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    seconds: float
    names: list[str] = field(init=False)  # the output names, in the graph's order

    def __post_init__(self) -> None:
        self.names = list(self.outputs)


def _export_fp32(ckpt, work: Path, opts: ExportOptions) -> _Exported:
    """Build the embedding graph, export it to ONNX in ``work`` and check its inputs/outputs are the contract's."""
    import onnxruntime  # noqa: F401  (imported before the export, as it always was)
    import torch

    modality = ckpt.config.modality
    gopts = _graph_options(ckpt, opts)
    graph = EmbeddingGraph(ckpt.model, modality, gopts).eval()
    spec = InputSpec.from_config(ckpt.config, ckpt.preprocessing)
    top_k_feed = {TOP_K_INPUT: np.array([gopts.top_k], dtype=np.int64)} if gopts.dynamic_top_k else {}

    example = {k: torch.from_numpy(v) for k, v in synthetic_inputs(spec, example_lengths(spec), seed=0).items()}
    example.update({k: torch.from_numpy(v) for k, v in top_k_feed.items()})
    onnx_path = work / ONNX_FILE
    seconds = export_graph(graph, example, onnx_path, opset=opts.opset, dynamo=opts.dynamo)
    inputs, outputs = graph_io(onnx_path)
    expected_in = [*INPUT_NAMES[modality], *([TOP_K_INPUT] if gopts.dynamic_top_k else [])]
    if list(inputs) != expected_in or list(outputs) != list(output_names(modality)):
        raise ConfigError(f"exported graph has inputs {list(inputs)} / outputs {list(outputs)}, not the contract's")
    return _Exported(graph, gopts, spec, top_k_feed, onnx_path, inputs, outputs, seconds)


def _parity(exp: _Exported, fp32) -> dict:
    """PyTorch vs ORT fp32 on every parity case (and at K=1 too when the graph takes a ``d2v_top_k`` input)."""
    parity = check_parity(exp.graph, fp32.session, exp.spec, extra_feeds=exp.top_k_feed)
    if exp.gopts.dynamic_top_k and exp.gopts.top_k > 1:  # the selection input really selects: check another K too
        k1 = {TOP_K_INPUT: np.array([1], dtype=np.int64)}
        parity["top_k_1_max_abs_diff"] = check_parity(exp.graph, fp32.session, exp.spec, extra_feeds=k1)["max_abs_diff"]
    return parity


def _heldout(exp: _Exported) -> dict[str, np.ndarray]:
    """The held-out batch (not a parity case) that variants and fusions are measured on."""
    heldout = synthetic_inputs(exp.spec, heldout_lengths(exp.spec), seed=4242)
    heldout.update(exp.top_k_feed)
    return heldout


def _variants(ckpt, exp: _Exported, fp32, heldout, work: Path, opts: ExportOptions):
    """Build each requested variant against fp32 on ``heldout``; return (manifest variants, details, fp32 s/batch).

    The details get each variant's speed relative to fp32 ORT, timed on the same batch.
    """
    reference = fp32(heldout)
    variants = {"fp32": Variant(ONNX_FILE, 1.0, engine=None, precision="fp32")}  # any engine
    details: dict[str, dict] = {}
    fp32_seconds = None
    for name in opts.variants:
        result = make_variant(
            name, exp.onnx_path, work, exp.names, heldout, reference,
            bars=opts.min_cosine, explicit=opts.variants_explicit, threads=opts.threads,
            calibration=lambda: _calibration_inputs(ckpt, exp, opts),
        )  # fmt: skip
        if result is None:
            continue
        variants[name] = result.as_variant()
        details[name] = result.as_dict()
    if details:
        from d2v.export.variants import time_runner

        fp32_seconds = time_runner(fp32, heldout)
        for d in details.values():
            d["speed_vs_fp32_ort"] = fp32_seconds / d["seconds_per_batch"] if d["seconds_per_batch"] else None
    return variants, details, fp32_seconds


def _calibration_inputs(ckpt, exp: _Exported, opts: ExportOptions):
    """Real calibration / held-out batches for static quantisation, through the model's preprocessing."""
    from d2v.export.calibration_data import calibration_feeds

    source = Path(opts.calibration) if opts.calibration else None
    return calibration_feeds(ckpt.config.modality, ckpt.preprocessing, ckpt.path, source, exp.top_k_feed)


def _optimize(ckpt, exp: _Exported, heldout, work: Path, opts: ExportOptions, variants: dict) -> dict | None:
    """ORT transformer fusions (``opts.optimize``); a saved file is added to ``variants`` as ``optimized``."""
    if not opts.optimize:
        return None
    from d2v.export.optimize import optimize

    t = ckpt.config.transformer
    optimization = optimize(
        exp.onnx_path, work, exp.names, heldout, num_heads=t.num_heads, hidden_size=t.dim, threads=opts.threads
    )
    if optimization.get("saved"):
        # ORT transformer fusions use com.microsoft operators: ONNX Runtime only.
        variants["optimized"] = Variant(optimization["file"], 1.0, engine="onnxruntime", precision="fp32")
    return optimization


def _report(exp: _Exported, opts: ExportOptions, parity: dict, heldout, details: dict, fp32_seconds, optimization):
    """The full ``parity.json`` report: parity cases, export facts, the held-out batch, variants, fusions."""
    import onnxruntime
    import torch

    return {
        **parity,
        "export": {
            "exporter": "dynamo" if opts.dynamo else "legacy",
            "opset": opts.opset,
            "seconds": exp.seconds,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "heldout_batch": {k: list(v.shape) for k, v in heldout.items()},
        "variants": details,
        "fp32_seconds_per_batch": fp32_seconds,
        "fastest": min(details, key=lambda k: details[k]["seconds_per_batch"]) if details else "fp32",
        "optimization": optimization,
    }


def _manifest(ckpt, sha: str, exp: _Exported, opts: ExportOptions, variants: dict, parity: dict) -> ModelManifest:
    """The ``model.json`` manifest (not yet saved): contract names, variants, embedding options, parity, source."""
    from d2v.models.preprocessing import preprocessing_to_dict

    gopts = exp.gopts
    return ModelManifest(
        name=opts.name or ckpt.path.name,
        modality=ckpt.config.modality,
        embedding_dim=ckpt.config.transformer.dim,
        num_layers=ckpt.config.transformer.depth,
        top_k=gopts.top_k,
        inputs=exp.inputs,
        outputs=exp.outputs,
        variants=variants,
        preprocessing=preprocessing_to_dict(ckpt.preprocessing),
        norm=gopts.norm,
        pooling=gopts.pooling,
        normalized=gopts.normalize,
        supports_top_k=gopts.dynamic_top_k,
        default_variant="fp32",
        max_batch_size=opts.max_batch_size,
        parity={
            "max_abs_diff": parity["max_abs_diff"],
            "tolerance": parity["tolerance"],
            "passed": parity["passed"],
            "cases": len(parity["cases"]),
            "report": "parity.json",
        },
        source={
            "checkpoint": str(ckpt.path.resolve()),
            "sha256": sha,
            "model_version": ckpt.config.version,
            **({"provenance": ckpt.source} if ckpt.source else {}),
        },
    )


def export_to_dir(ckpt, sha: str, work: Path, opts: ExportOptions) -> ModelManifest:
    """Export into the (empty) directory ``work``; return the saved manifest."""
    exp = _export_fp32(ckpt, work, opts)
    fp32 = ort_runner(exp.onnx_path, exp.names, opts.threads)
    parity = _parity(exp, fp32)
    heldout = _heldout(exp)
    variants, details, fp32_seconds = _variants(ckpt, exp, fp32, heldout, work, opts)
    optimization = _optimize(ckpt, exp, heldout, work, opts, variants)
    if ckpt.config.modality == "text":  # the export ships the tokenizer
        tok = ckpt.preprocessing.tokenizer_file
        shutil.copy2(ckpt.path / tok, work / tok)
    save_report(_report(exp, opts, parity, heldout, details, fp32_seconds, optimization), work)
    manifest = _manifest(ckpt, sha, exp, opts, variants, parity)
    manifest.save(work)
    if opts.calibration_budget_s > 0:
        manifest.calibration = _calibrate(manifest, work, opts)
        manifest.save(work)
    return manifest


def _calibrate(manifest: ModelManifest, work: Path, opts: ExportOptions) -> dict:
    """Items/s and cosine of every (engine, variant) this host runs, with its CPU fingerprint: what
    ``--engine auto`` reads instead of measuring again on a host with the same fingerprint."""
    from d2v.runtime import selection

    cands = selection.candidates(manifest, selection.detect_capabilities())
    cal = selection.measure(manifest, work, cands, budget_s=opts.calibration_budget_s, threads=opts.threads)
    for m in cal.measurements:
        log.info("calibration %s/%s: %.1f items/s, cosine %.6f", m.engine, m.variant, m.items_per_s, m.cosine)
    return dataclasses.asdict(cal)


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; pass --overwrite or choose another OUT_DIR")


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, opts: ExportOptions | None = None):
    """Export ``checkpoint`` to ``out_dir`` (ONNX, parity.json, variants, model.json). Returns the manifest."""
    opts = opts or ExportOptions()
    out = Path(out_dir).absolute()
    if opts.name is None:  # a model store entry is named by its folder: keep the two the same
        opts = dataclasses.replace(opts, name=out.name)
    opts.validate()
    check_out_dir(out, opts.overwrite)
    start = time.perf_counter()
    ckpt, sha = _load(Path(checkpoint))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = export_to_dir(ckpt, sha, work, opts)
        check_out_dir(out, opts.overwrite)  # nothing appeared at OUT_DIR while we exported
        replace_dir(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s (%s) to %s in %.1f s", manifest.name, manifest.modality, out, time.perf_counter() - start)
    return manifest
