"""``d2v serve``: argparse only at import; uvicorn and the app are imported when the command runs.

Flags override ``D2V_*`` environment variables, which override the defaults (``ServerSettings``).

Two conveniences run other ``d2v`` commands in a subprocess before serving, so this process stays torch-free:
``--quickstart-if-empty`` runs ``d2v quickstart`` when the store holds no model, and ``--model`` accepts a
Hugging Face data2vec model (a ``save_pretrained`` directory or a hub id such as
``facebook/data2vec-text-base``), converted with ``d2v convert hf`` and exported with ``d2v export`` into
``$D2V_HOME/cache/hf/<name>-<hash>/`` once, then reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

HF_MODEL_TYPES = ("data2vec-text", "data2vec-audio", "data2vec-vision")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        help="model name in the store, an export directory, or a Hugging Face data2vec model (save_pretrained "
        "directory or hub id, converted + exported on first use) (repeatable; default: every model)",
    )
    p.add_argument(
        "--quickstart-if-empty",
        action="store_true",
        help="when the store holds no model, build the default ones first (d2v quickstart; a few minutes)",
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
    p.add_argument(
        "--variant",
        default=None,
        help="variant from model.json (fp32, int8, fp16, bf16, optimized; default: its default_variant); "
        "the server refuses to start when the engine cannot run it (bf16: --engine openvino on a BF16 CPU)",
    )
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
    if getattr(args, "quickstart_if_empty", False) and not settings.models:
        _quickstart_if_empty(settings.store)
    if settings.models:
        resolved = [_resolve_model(entry, settings.store) for entry in settings.models]
        if resolved != settings.models:
            settings = settings.model_copy(update={"models": resolved})
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


def _run_d2v(argv: list[str], what: str) -> None:
    """Run ``d2v ARGV`` in a child interpreter (torch stays out of the server process)."""
    from d2v.errors import ConfigError

    print(f"d2v serve: {what}: d2v {' '.join(argv)}", file=sys.stderr, flush=True)
    rc = subprocess.call([sys.executable, "-m", "d2v", *argv])
    if rc != 0:
        raise ConfigError(f"{what} failed (d2v {argv[0]} exited with status {rc})")


def _quickstart_if_empty(store: Path) -> None:
    from d2v.paths import store_has_models

    if store_has_models(store):
        return
    _run_d2v(["quickstart", "--store", str(store)], f"the model store {store} is empty; building the default models")


def _hf_model_type(path: Path) -> str | None:
    """``model_type`` of a Hugging Face ``save_pretrained`` directory holding a data2vec model, else None."""
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if model_type in HF_MODEL_TYPES else None


def _cache_key(src: str, local: Path | None) -> str:
    """Directory name for a converted model: its name plus a hash of where it came from (and, for a local
    directory, the sizes and times of its files, so an edited model is converted again)."""
    h = hashlib.sha256(src.encode())
    if local is not None:
        h.update(str(local.resolve()).encode())
        for f in sorted(local.iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    name = re.sub(r"[^\w.-]", "-", (local.resolve().name if local is not None else src.rsplit("/", 1)[-1]))
    return f"{name}-{h.hexdigest()[:10]}"


def _resolve_model(entry: str, store: Path) -> str:
    """A store name or export directory stays as it is; a Hugging Face data2vec model (local directory or hub
    id) becomes the export directory of its converted copy, built on first use."""
    from d2v.errors import NotFound
    from d2v.export.manifest import MANIFEST_FILE
    from d2v.paths import default_cache

    path = Path(entry).expanduser()
    if (path / MANIFEST_FILE).is_file() or (store / entry / MANIFEST_FILE).is_file():
        return entry
    if path.is_dir():
        if _hf_model_type(path) is None:
            raise NotFound(
                f"model {entry!r}: the directory has neither {MANIFEST_FILE} (a d2v export) nor a Hugging Face "
                f"config.json with model_type {' / '.join(HF_MODEL_TYPES)}"
            )
        local = path
    elif _HUB_ID.match(entry):
        local = None
    else:
        raise NotFound(f"model {entry!r}: neither a model directory, a model in the store {store}, nor a hub id")
    cache = default_cache("hf", _cache_key(entry, local))
    export_dir = cache / "model"
    if (export_dir / MANIFEST_FILE).is_file():
        return str(export_dir)
    checkpoint = cache / "checkpoint"
    name = re.sub(r"[^\w.-]", "-", (local.resolve().name if local is not None else entry.rsplit("/", 1)[-1]))
    where = str(local) if local is not None else f"the Hugging Face Hub ({entry})"
    try:
        _run_d2v(["convert", "hf", str(local or entry), str(checkpoint), "--overwrite"], f"converting {where}")
    except Exception as exc:
        hint = "" if local is not None else " (offline? download it where the Hub is reachable, pass the directory)"
        raise NotFound(f"model {entry!r}: could not convert {where}{hint}: {getattr(exc, 'message', exc)}") from None
    _run_d2v(
        ["export", str(checkpoint), str(export_dir), "--name", name, "--variants", "none", "--overwrite"],
        f"exporting {name}",
    )
    return str(export_dir)


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
    p.add_argument("--engine", choices=["onnxruntime", "openvino", "triton"], default=None)
    p.add_argument("--variant", default=None, help="variant from model.json (default: its default_variant)")
    p.add_argument("--threads", dest="intra_op_threads", type=int, default=None, help="CPU threads per model")
    p.add_argument("--triton-url", default=None)
    p.add_argument("--triton-protocol", choices=["grpc", "http"], default=None)
    p.add_argument("--requests", type=int, default=200, help="requests per phase (after the warm-up)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--items", type=int, default=1, help="inputs per request")
    p.add_argument("--duration", type=float, default=30.0, help="stop a phase after this many seconds")
    p.add_argument("--warmup", type=int, default=2, help="uncounted requests before each phase")
    p.add_argument("--json", default=None, help="write the JSON here (default: stdout, after the table)")
    p.set_defaults(func=_bench_serve)


def _bench_serve(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from pydantic import ValidationError

    from d2v.errors import ConfigError

    from .bench import bench_serve, format_table
    from .settings import ServerSettings

    keys = ("store", "engine", "variant", "intra_op_threads", "triton_url", "triton_protocol")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.model:
        overrides["models"] = [args.model]
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid server settings: {exc}") from None
    result = bench_serve(
        settings,
        requests=args.requests,
        concurrency=args.concurrency,
        items=args.items,
        duration_s=args.duration,
        warmup=args.warmup,
    )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    else:
        json.dump(result, sys.stdout, indent=2)
        print()
    return 0
