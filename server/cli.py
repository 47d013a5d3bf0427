"""``d2v serve`` flags and ``d2v bench serve``: argparse only at import; uvicorn and the app are imported
when a command runs.

Flags override ``D2V_*`` environment variables, which override the defaults (``ServerSettings``). The ``d2v``
command line wraps this parser with model provisioning (``d2v.workflows.serve``: ``--quickstart-if-empty``
and Hugging Face models); ``register`` alone serves what is already exported.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import ServerSettings


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve exported models over HTTP (OpenAI-compatible + native API) and gRPC (KServe v2)",
        description="Serve exported models: POST /v1/embeddings, /v1/embed/{text,image,audio}; GET /v1/models, "
        "/info, /livez, /readyz, /metrics; and gRPC inference.GRPCInferenceService (KServe v2, as Triton) with "
        "grpc.health.v1 and reflection. Every flag also reads D2V_<FLAG> from the environment.",
    )
    # default=None everywhere: only flags the user typed override the environment / settings defaults.
    p.add_argument("--store", default=None, help="model store directory (default: $D2V_HOME/models)")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        metavar="NAME_OR_DIR",
        help="model name in the store, an export directory, or (with the d2v command) a Hugging Face data2vec "
        "model: save_pretrained directory or hub id, converted + exported on first use (repeatable; default: all)",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1; never 0.0.0.0 unless asked)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8080)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port on the same host (default 8081; 0 = off)")
    p.add_argument("--grpc-tls-cert", default=None, metavar="PEM", help="serve gRPC over TLS: certificate chain")
    p.add_argument("--grpc-tls-key", default=None, metavar="PEM", help="the private key of --grpc-tls-cert")
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes (default 1)")
    p.add_argument(
        "--engine",
        choices=["auto", "onnxruntime", "openvino", "triton"],
        default=None,
        help="auto (default): per model, the fastest engine/variant this host runs whose pooled cosine vs fp32 "
        "is >= --min-cosine, from measurements (model.json, else a <= 10 s calibration, cached); onnxruntime, "
        "openvino (bf16 on AMX / AVX512-BF16 CPUs), or triton (a running Triton server)",
    )
    p.add_argument("--min-cosine", type=float, default=None, help="auto: the cosine bar (default 0.999)")
    p.add_argument(
        "--calibration-budget-s",
        type=float,
        default=None,
        help="auto: seconds per model to measure the candidates when no measurement fits this host (default 10)",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="variant from model.json (fp32, int8, fp16, bf16, optimized; default: its default_variant); "
        "the server refuses to start when the engine cannot run it (bf16: --engine openvino on a BF16 CPU)",
    )
    p.add_argument("--threads", dest="intra_op_threads", type=int, default=None, help="CPU threads per model")
    p.add_argument(
        "--openvino-precision",
        choices=["bf16", "f32"],
        default=None,
        help="--engine openvino on an fp32 variant: f32 (default, exact) or the bf16 hint (the bf16 variant, as "
        "--engine auto picks it, is always bf16)",
    )
    p.add_argument("--triton-url", default=None, help="Triton address (default 127.0.0.1:8001 for gRPC)")
    p.add_argument("--triton-protocol", choices=["grpc", "http"], default=None)
    p.add_argument(
        "--triton-mode",
        choices=["encoder", "ensemble"],
        default=None,
        help="encoder: preprocess here, send tensors (default); ensemble: send raw bytes",
    )
    p.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=None,
        help="accept this Bearer key (repeatable; or D2V_API_KEYS=k1,k2); none = no auth",
    )
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--max-wait-ms", type=float, default=None)
    p.add_argument("--max-queue", type=int, default=None, help="queued items per model before 429")
    p.add_argument(
        "--max-concurrent-requests", type=int, default=None, help="requests in flight per model before 429 (512)"
    )
    p.add_argument("--max-inflight-bytes", type=int, default=None, help="request bytes in flight per model (256 MiB)")
    p.add_argument("--max-body-bytes", type=int, default=None)
    p.add_argument("--max-items-per-request", type=int, default=None)
    p.add_argument("--max-input-tokens", type=int, default=None)
    p.add_argument("--max-image-pixels", type=int, default=None)
    p.add_argument("--max-audio-seconds", type=float, default=None)
    p.add_argument(
        "--no-truncate",
        dest="truncate",
        action="store_false",
        default=None,
        help="refuse over-long text with 413 instead of truncating",
    )
    p.add_argument("--allow-url-fetch", action="store_true", default=None)
    p.add_argument("--url-allowlist", action="append", default=None, metavar="URL_PREFIX")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", default=None)
    p.set_defaults(func=_serve)
    return p


def settings_from_args(args: argparse.Namespace, keys: tuple[str, ...] | None = None) -> ServerSettings:
    """Flags the user typed (``keys``: only these; default: every settings field) override ``D2V_*`` variables,
    which override the defaults."""
    from pydantic import ValidationError

    from d2v.core.errors import ConfigError

    from .settings import ServerSettings

    names = keys or tuple(ServerSettings.model_fields)
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    try:
        return ServerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid server settings: {exc}") from None


def run_server(settings: ServerSettings) -> int:
    """Serve until stopped: one process, or ``settings.workers`` uvicorn workers rebuilding the same settings."""
    import json
    import os

    import uvicorn

    from .settings import SETTINGS_ENV

    common = {
        "host": settings.host,
        "port": settings.port,
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "log_level": "info",
    }
    if settings.workers == 1:
        from .app import create_app

        uvicorn.run(create_app(settings), **common)
        return 0
    # Several processes: each rebuilds the same settings (API keys travel in their own variable, since
    # the JSON dump masks secrets).
    os.environ[SETTINGS_ENV] = settings.model_dump_json(exclude={"api_keys"})
    os.environ["D2V_API_KEYS"] = json.dumps([k.get_secret_value() for k in settings.api_keys])
    uvicorn.run("d2v.server.app:create_app_from_env", factory=True, workers=settings.workers, **common)
    return 0


def _serve(args: argparse.Namespace) -> int:
    return run_server(settings_from_args(args))


# ---------------------------------------------------------------------------------------------- bench
def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    p = bench_subparsers.add_parser(
        "serve",
        help="gateway throughput / latency on a free 127.0.0.1 port, as ratios vs calling the engine directly",
        description="Start the gateway on a free 127.0.0.1 port over one model, send at most N requests at "
        "concurrency C (stopping early after --duration seconds), and report throughput and latency "
        "percentiles next to the same load sent straight to the engine in the same run (JSON + a table).",
    )
    p.add_argument("--store", default=None, help="model store directory (default: $D2V_HOME/models)")
    p.add_argument("--model", default=None, metavar="NAME_OR_DIR", help="model to serve (default: the first)")
    p.add_argument("--engine", choices=["auto", "onnxruntime", "openvino", "triton"], default=None)
    p.add_argument("--min-cosine", type=float, default=None, help="auto: the cosine bar (default 0.999)")
    p.add_argument("--variant", default=None, help="variant from model.json (default: its default_variant)")
    p.add_argument("--threads", dest="intra_op_threads", type=int, default=None, help="CPU threads per model")
    p.add_argument("--triton-url", default=None)
    p.add_argument("--triton-protocol", choices=["grpc", "http"], default=None)
    p.add_argument("--requests", type=int, default=200, help="requests per phase (after the warm-up)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--items", type=int, default=1, help="inputs per request")
    p.add_argument("--duration", type=float, default=30.0, help="stop a phase after this many seconds")
    p.add_argument("--warmup", type=int, default=2, help="uncounted requests before each phase")
    p.add_argument(
        "--protocol",
        choices=["http", "grpc"],
        default="http",
        help="grpc: also drive the gateway's KServe v2 gRPC front end and report it next to HTTP",
    )
    p.add_argument("--json", default=None, help="write the JSON here (default: stdout, after the table)")
    p.set_defaults(func=_bench_serve)


def _bench_serve(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from .bench import bench_serve, format_table

    args.models = [args.model] if args.model else None
    keys = ("store", "models", "engine", "min_cosine", "variant", "intra_op_threads", "triton_url", "triton_protocol")
    settings = settings_from_args(args, keys)
    result = bench_serve(
        settings,
        requests=args.requests,
        concurrency=args.concurrency,
        items=args.items,
        duration_s=args.duration,
        warmup=args.warmup,
        protocol=args.protocol,
    )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    else:
        json.dump(result, sys.stdout, indent=2)
        print()
    return 0
