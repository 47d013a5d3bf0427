"""``d2v export``: checkpoint -> ONNX (+ parity, variants, fusions, manifest), atomically.

Everything is written to a temp dir beside ``OUT_DIR`` and renamed into place only when every check
passed, so a failed export (bad checkpoint, missing tokenizer, unsupported opset, parity failure, a
variant under its cosine bar) leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d2v.errors import ConfigError, NotFound
from d2v.export.manifest import INPUT_NAMES, TOP_K_INPUT, ModelManifest, Variant, output_names
from d2v.export.onnx_export import DEFAULT_OPSET, EmbeddingGraph, GraphOptions, check_opset, export_graph, graph_io
from d2v.export.parity import (
    InputSpec,
    check_parity,
    example_lengths,
    heldout_lengths,
    make_inputs,
    save_report,
)
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def export_to_dir(ckpt, sha: str, work: Path, opts: ExportOptions) -> ModelManifest:
    """Export into the (empty) directory ``work``; return the saved manifest."""
    import onnxruntime
    import torch

    from d2v.models.preprocessing import preprocessing_to_dict

    modality = ckpt.config.modality
    gopts = _graph_options(ckpt, opts)
    graph = EmbeddingGraph(ckpt.model, modality, gopts).eval()
    spec = InputSpec.from_config(ckpt.config, ckpt.preprocessing)
    top_k_feed = {TOP_K_INPUT: np.array([gopts.top_k], dtype=np.int64)} if gopts.dynamic_top_k else {}

    example = {k: torch.from_numpy(v) for k, v in make_inputs(spec, example_lengths(spec), seed=0).items()}
    example.update({k: torch.from_numpy(v) for k, v in top_k_feed.items()})
    onnx_path = work / ONNX_FILE
    export_seconds = export_graph(graph, example, onnx_path, opset=opts.opset, dynamo=opts.dynamo)
    inputs, outputs = graph_io(onnx_path)
    expected_in = [*INPUT_NAMES[modality], *([TOP_K_INPUT] if gopts.dynamic_top_k else [])]
    if list(inputs) != expected_in or list(outputs) != list(output_names(modality)):
        raise ConfigError(f"exported graph has inputs {list(inputs)} / outputs {list(outputs)}, not the contract's")

    names = list(outputs)
    fp32 = ort_runner(onnx_path, names, opts.threads)
    parity = check_parity(graph, fp32.session, spec, extra_feeds=top_k_feed)
    if gopts.dynamic_top_k and gopts.top_k > 1:  # the selection input really selects: check another K too
        k1 = {TOP_K_INPUT: np.array([1], dtype=np.int64)}
        parity["top_k_1_max_abs_diff"] = check_parity(graph, fp32.session, spec, extra_feeds=k1)["max_abs_diff"]

    heldout = make_inputs(spec, heldout_lengths(spec), seed=4242)
    heldout.update(top_k_feed)
    reference = fp32(heldout)
    variants = {"fp32": Variant(ONNX_FILE, 1.0, engine=None, precision="fp32")}  # any engine
    details: dict[str, dict] = {}
    fp32_seconds = None
    for name in opts.variants:
        result = make_variant(
            name, onnx_path, work, names, heldout, reference,
            bars=opts.min_cosine, explicit=opts.variants_explicit, threads=opts.threads,
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

    optimization = None
    if opts.optimize:
        from d2v.export.optimize import optimize

        t = ckpt.config.transformer
        optimization = optimize(
            onnx_path, work, names, heldout, num_heads=t.num_heads, hidden_size=t.dim, threads=opts.threads
        )
        if optimization.get("saved"):
            # ORT transformer fusions use com.microsoft operators: ONNX Runtime only.
            variants["optimized"] = Variant(optimization["file"], 1.0, engine="onnxruntime", precision="fp32")

    if modality == "text":
        tok = ckpt.preprocessing.tokenizer_file
        shutil.copy2(ckpt.path / tok, work / tok)

    report = {
        **parity,
        "export": {
            "exporter": "dynamo" if opts.dynamo else "legacy",
            "opset": opts.opset,
            "seconds": export_seconds,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "heldout_batch": {k: list(v.shape) for k, v in heldout.items()},
        "variants": details,
        "fp32_seconds_per_batch": fp32_seconds,
        "fastest": min(details, key=lambda k: details[k]["seconds_per_batch"]) if details else "fp32",
        "optimization": optimization,
    }
    save_report(report, work)
    manifest = ModelManifest(
        name=opts.name or ckpt.path.name,
        modality=modality,
        embedding_dim=ckpt.config.transformer.dim,
        num_layers=ckpt.config.transformer.depth,
        top_k=gopts.top_k,
        inputs=inputs,
        outputs=outputs,
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
    manifest.save(work)
    return manifest


def _install(work: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``work`` dir to ``out`` (an existing ``out`` only with ``overwrite``)."""
    if out.exists():
        if not overwrite:
            raise ConfigError(f"{out} already exists; pass --overwrite or choose another OUT_DIR")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)


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
        _install(work, out, overwrite=opts.overwrite or (out.is_dir() and not any(out.iterdir())))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s (%s) to %s in %.1f s", manifest.name, manifest.modality, out, time.perf_counter() - start)
    return manifest
