"""``d2v serve``: argparse only at import; uvicorn and the app are imported when the command runs.

Flags override ``D2V_*`` environment variables, which override the defaults (``ServerSettings``).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve exported models over HTTP (OpenAI-compatible + native API)",
        description="Serve exported models: POST /v1/embeddings, /v1/embed/{text,image,audio}; GET /v1/models, "
        "/info, /livez, /readyz, /metrics. Every flag also reads D2V_<FLAG> from the environment.",
    )
    # default=None everywhere: only flags the user typed override the environment / settings defaults.
    p.add_argument("--store", default=None, help="model store directory (default: $D2V_HOME/models)")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        metavar="NAME_OR_DIR",
        help="model name in the store or an export directory (repeatable; default: every model)",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1; never 0.0.0.0 unless asked)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes (default 1)")
    p.add_argument(
        "--engine",
        choices=["onnxruntime", "openvino", "triton"],
        default=None,
        help="onnxruntime (default, fp32-exact), openvino (bf16 on AMX CPUs: the fast CPU path), "
        "or triton (a running Triton server)",
    )
    p.add_argument("--variant", default=None, help="ONNX variant from model.json (fp32, int8, ...)")
    p.add_argument("--threads", dest="intra_op_threads", type=int, default=None, help="CPU threads per model")
    p.add_argument("--openvino-precision", choices=["bf16", "f32"], default=None)
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


def _serve(args: argparse.Namespace) -> int:
    import json
    import os

    import uvicorn
    from pydantic import ValidationError

    from d2v.errors import ConfigError

    from .settings import SETTINGS_ENV, ServerSettings

    overrides = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose") and v is not None}
    overrides = {k: v for k, v in overrides.items() if k in ServerSettings.model_fields}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid server settings: {exc}") from None
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
