"""``d2v embed`` and ``d2v extract``: argparse only at import; the work is imported when a command runs."""

from __future__ import annotations

import argparse
from typing import Any

from .connection import API_KEY_ENV, DEFAULT_GRPC, DEFAULT_SERVER, GRPC_ENV, SERVER_ENV


def register(subparsers: Any) -> None:
    """Add the ``embed`` and ``extract`` commands to the ``d2v`` parser."""
    _register_embed(subparsers)
    _register_extract(subparsers)


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (default: the one serving the modality)")
    p.add_argument("--pooling", choices=["mean", "cls", "none"], help="default: the model's; none = token-level")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", default=True, help="skip L2 norm")
    p.add_argument("--dimensions", type=int, help="truncate to this many dimensions, then re-normalise")


def _register_embed(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed text, images or audio with a running server",
        description=(
            "Embed inputs with a d2v server. Examples: d2v embed 'hello' 'world'; d2v embed text 'hello'; "
            "d2v embed --image a.png --image b.jpg -o vecs.npy; d2v embed --audio a.wav"
        ),
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="strings to embed (a leading word 'text' is optional)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file (repeatable)")
    group.add_argument("--audio", action="append", default=[], metavar="PATH", help="an audio file (repeatable)")
    p.add_argument("--server", default=None, help=f"server URL (default: ${SERVER_ENV} or {DEFAULT_SERVER})")
    p.add_argument("--grpc", action="store_true", help="use the KServe v2 gRPC API (the gateway's or Triton's)")
    p.add_argument("--grpc-url", default=None, help=f"--grpc target host:port (default: ${GRPC_ENV} or {DEFAULT_GRPC})")
    p.add_argument("--api-key", default=None, help=f"Bearer API key (default: ${API_KEY_ENV})")
    _add_output_options(p)
    p.add_argument("-o", "--output", metavar="FILE.npy", help="write the vectors to a .npy file instead of printing")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--retries", type=int, default=5, help="retries on 429/503/connection errors (backoff + jitter)")
    p.set_defaults(func=_run_embed)


def _register_extract(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "extract",
        help="offline embedding extraction to Parquet (resumable)",
        description=(
            "Embed a directory, a JSONL/CSV/Parquet manifest (id + path or id + text) or stdin lines ('-') into "
            "Parquet shards under OUT_DIR. Re-running continues where a killed run stopped."
        ),
    )
    p.add_argument("input", metavar="INPUT", help="directory, manifest file (.jsonl/.csv/.parquet) or '-' for stdin")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--engine",
        choices=["auto", "onnxruntime", "openvino", "server", "ray"],
        default="auto",
        help="auto (default): in this process, the fastest engine/variant this host runs within the cosine bar "
        "(as d2v serve); onnxruntime / openvino: in this process, that runtime; server: a running d2v server; "
        "ray: Ray Data actors, each running the auto choice",
    )
    p.add_argument("--server", default=None, help=f"server URL for --engine server (default: ${SERVER_ENV})")
    p.add_argument(
        "--protocol",
        choices=["http", "grpc"],
        default="http",
        help="--engine server: http (the native API) or grpc (KServe v2 ModelStreamInfer, to the gateway or Triton)",
    )
    p.add_argument("--grpc-url", default=None, help=f"--protocol grpc target host:port (default: ${GRPC_ENV})")
    p.add_argument("--api-key", default=None, help=f"Bearer API key (default: ${API_KEY_ENV})")
    p.add_argument("--store", default=None, help="model store (default: $D2V_HOME/models)")
    p.add_argument("--modality", choices=["text", "image", "audio"], help="default: inferred from file types")
    p.add_argument(
        "--model", action="append", default=[], help="model name or directory (repeatable, one per modality)"
    )
    p.add_argument("--pooling", choices=["mean", "cls"], help="pooled vector (default: the model's)")
    p.add_argument("--tokens", action="store_true", help="also store token-level (layer-averaged) embeddings")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", default=True, help="skip L2 norm")
    p.add_argument("--dimensions", type=int, help="truncate to this many dimensions, then re-normalise")
    p.add_argument("--batch-size", type=int, default=32, help="items per engine call")
    p.add_argument(
        "--partition-size",
        "--shard-size",
        dest="partition_size",
        type=int,
        default=1024,
        help="input rows per partition: the unit of work, of commit (one Parquet shard per model) and of resume",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="engine workers (0 = auto): threads in process, requests in flight (server), actors (ray)",
    )
    p.add_argument(
        "--ray-window",
        "--ray-chunk-shards",
        dest="ray_window",
        type=int,
        default=0,
        help="--engine ray: partitions per Ray Data pipeline (0 = 1024); each is committed as soon as it is written",
    )
    p.add_argument("--num-cpus", type=float, default=1.0, help="--engine ray: CPUs per engine actor")
    p.add_argument("--num-gpus", type=float, default=0.0, help="--engine ray: GPUs per engine actor")
    p.add_argument("--format", choices=["parquet", "npy"], default="parquet", help="npy: also write <model>.npy")
    p.add_argument("--no-plot", dest="plot", action="store_false", default=True, help="skip the PCA PNG")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start OUT_DIR anew (its earlier embeddings are deleted) instead of resuming it",
    )
    p.set_defaults(func=_run_extract)


def _run_embed(args: argparse.Namespace) -> int:
    from d2v.extract.embed_cmd import run_embed

    return run_embed(args)


def _run_extract(args: argparse.Namespace) -> int:
    from d2v.extract.job import run_extract

    return run_extract(args)
