"""``d2v export`` and ``d2v bench export``. Light: argparse only at import time (no torch, no onnx)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_VARIANTS = "fp16,int8,bf16,ov-int8"


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _bars(items: list[str] | None) -> dict[str, float]:
    from d2v.core.errors import ConfigError

    bars = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            bars[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--min-cosine expects VARIANT=VALUE, got {item!r}") from None
    return bars


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="checkpoint -> ONNX (+ parity, variants, model.json), TensorRT engine or Triton repository",
        description=(
            "Export a project checkpoint. --format onnx (default) writes OUT_DIR with model.onnx (+ .data), "
            "parity.json, variants and model.json; tensorrt adds model.plan (GPU hosts only); triton writes a "
            "Triton model repository OUT_DIR (ensemble <name>, <name>_preprocess, <name>_encoder)."
        ),
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="project checkpoint directory")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="export directory (triton: model repository)")
    p.add_argument("--format", choices=("onnx", "tensorrt", "triton"), default="onnx")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of fp16,int8,bf16,ov-int8, or 'none' (default: {DEFAULT_VARIANTS}, skipping what "
        "this host cannot run; named explicitly, an unsupported variant is an error)",
    )
    p.add_argument(
        "--top-k", type=int, default=None, help="layers averaged for token embeddings (default: checkpoint's)"
    )
    p.add_argument("--norm", choices=("layer", "target"), default=None)
    p.add_argument("--pooling", choices=("mean", "cls"), default=None, help="default pooled output for the server")
    p.add_argument("--normalize", action="store_true", help="L2-normalise pooled embeddings in the graph")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--dynamic-top-k", action="store_true", help="add the optional d2v_top_k int64[1] input")
    p.add_argument("--name", default=None, help="model name (default: the checkpoint directory's name)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--min-cosine", action="append", metavar="VARIANT=BAR", help="override a variant's cosine bar")
    p.add_argument("--no-optimize", action="store_true", help="skip the ORT transformer-fusion pass")
    p.add_argument("--legacy-exporter", action="store_true", help="torch.onnx legacy (TorchScript) exporter")
    p.add_argument("--threads", type=int, default=0, help="runtime threads for the checks (0 = default)")
    p.add_argument(
        "--calibration",
        metavar="DIR|MANIFEST",
        default=None,
        help="ov-int8: real inputs to calibrate on (directory, .jsonl / .csv / .txt manifest; every 5th item is "
        "held out to score the variant); default: the bundled sample data of the modality",
    )
    p.add_argument(
        "--calibration-budget",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="measure every engine/variant on this host for `d2v serve --engine auto` (0 = skip; default 60)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    t = p.add_argument_group("triton (--format triton)")
    t.add_argument("--triton-backend", choices=("python", "onnxruntime", "tensorrt"), default="python",
                   help="encoder backend: python (ORT inside the python backend; works everywhere), onnxruntime, "
                   "tensorrt (tensorrt_plan; GPU hosts)")  # fmt: skip
    t.add_argument("--triton-variant", default=None, help="ONNX variant the encoder serves (default fp32)")
    t.add_argument("--preferred-batch-sizes", type=_csv_ints, default=[4, 8, 16])
    t.add_argument("--max-queue-delay-us", type=int, default=2000)
    t.add_argument("--max-queue-size", type=int, default=1024)
    t.add_argument("--queue-timeout-us", type=int, default=5_000_000)
    t.add_argument("--instance-kind", choices=("KIND_CPU", "KIND_GPU", "KIND_AUTO"), default="KIND_CPU")
    t.add_argument("--encoder-instances", type=int, default=1)
    t.add_argument("--preprocess-instances", type=int, default=2)
    p.set_defaults(func=run_export)


def _options(args):
    from d2v.export.exporter import ExportOptions
    from d2v.export.onnx_export import DEFAULT_OPSET
    from d2v.export.variants import parse_variants

    explicit = args.variants is not None
    text = DEFAULT_VARIANTS if args.variants is None else ("" if args.variants.lower() == "none" else args.variants)
    return ExportOptions(
        name=args.name,
        top_k=args.top_k,
        norm=args.norm,
        pooling=args.pooling,
        normalize=args.normalize,
        opset=args.opset or DEFAULT_OPSET,
        dynamic_top_k=args.dynamic_top_k,
        variants=parse_variants(text),
        variants_explicit=explicit,
        min_cosine=_bars(args.min_cosine),
        optimize=not args.no_optimize,
        dynamo=not args.legacy_exporter,
        max_batch_size=args.max_batch_size,
        threads=args.threads,
        overwrite=args.overwrite,
        calibration_budget_s=args.calibration_budget,
        calibration=args.calibration,
    )


def run_export(args) -> int:
    from d2v.export.exporter import export_onnx

    opts = _options(args)
    opts.validate()
    if args.format == "tensorrt" or (args.format == "triton" and args.triton_backend == "tensorrt"):
        from d2v.export.tensorrt import require_gpu

        require_gpu()  # before any work: say so and exit non-zero on CPU hosts
    if args.format == "onnx":
        manifest = export_onnx(args.checkpoint, args.out_dir, opts)
    elif args.format == "tensorrt":
        manifest = _export_tensorrt(args, opts)
    else:
        manifest = _export_triton(args, opts)
    print(json.dumps({"name": manifest.name, "modality": manifest.modality, "out": str(args.out_dir),
                      "variants": {k: v.cosine_vs_fp32 for k, v in manifest.variants.items()},
                      "parity_max_abs_diff": manifest.parity.get("max_abs_diff")}, indent=2))  # fmt: skip
    return 0


def _export_tensorrt(args, opts):
    from d2v.export.exporter import check_out_dir, export_onnx
    from d2v.export.tensorrt import TensorRTOptions, build_engine

    out = args.out_dir.absolute()
    check_out_dir(out, opts.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.trt-", dir=out.parent) as tmp:
        work = Path(tmp) / "model"
        manifest = export_onnx(args.checkpoint, work, opts)
        build_engine(work, TensorRTOptions(max_batch_size=opts.max_batch_size))
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    return manifest


def _export_triton(args, opts):
    from d2v.core.errors import ConfigError
    from d2v.export.exporter import export_onnx
    from d2v.export.triton_repo import TritonRepoOptions, write_repository

    repo = args.out_dir.absolute()
    name = opts.name or args.checkpoint.name
    clash = [n for n in (name, f"{name}_preprocess", f"{name}_encoder") if (repo / n).exists()]
    if clash:
        raise ConfigError(f"{repo} already holds model(s) {clash}; remove them or write to another repository")
    topts = TritonRepoOptions(
        encoder_backend=args.triton_backend,
        variant=args.triton_variant,
        max_batch_size=opts.max_batch_size,
        preferred_batch_sizes=args.preferred_batch_sizes,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
        queue_timeout_us=args.queue_timeout_us,
        instance_kind=args.instance_kind,
        encoder_instances=args.encoder_instances,
        preprocess_instances=args.preprocess_instances,
        intra_op_threads=args.threads,
    )
    topts.validate(opts.max_batch_size)
    repo.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{repo.name}.export-", dir=repo.parent) as tmp:
        work = Path(tmp) / "model"
        manifest = export_onnx(args.checkpoint, work, opts)
        if topts.encoder_backend == "tensorrt":
            from d2v.export.tensorrt import TensorRTOptions, build_engine

            topts.plan_file = build_engine(work, TensorRTOptions(max_batch_size=opts.max_batch_size))
        write_repository(work, repo, topts)
    return manifest


# ---------------------------------------------------------------------------------------------- bench
def register_bench(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "export",
        help="throughput of an exported model's engines/variants, as ratios vs fp32 ONNX Runtime (same run)",
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="an exported model directory (model.json)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128, help="tokens (text) or samples/1000 x 16 (audio: 2 s default)")
    p.add_argument("--seconds", type=float, default=2.0, help="audio clip length")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    from d2v.export.bench import bench_export, format_table

    result = bench_export(
        args.model_dir, batch=args.batch, length=args.length, seconds=args.seconds,
        threads=args.threads, repeats=args.repeats,
    )  # fmt: skip
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    else:
        json.dump(result, sys.stdout, indent=2)
        print()
    return 0
