"""``d2v bench serve``: what the HTTP gateway costs on top of its engine, measured in one run.

Two phases over the same model, the same request shape, the same concurrency and the same bounds:

1. ``engine``: the engine called directly (``engine.embed`` on tensors preprocessed once up front): pure
   inference, the floor.
2. ``gateway``: the real app under uvicorn on a free ``127.0.0.1`` port, driven over HTTP
   (``POST /v1/embed/<modality>``): JSON, decoding / tokenising, dynamic batching, inference, encoding.
3. ``grpc`` (``--protocol grpc``): the same server, the same load over its KServe v2 gRPC front end
   (``ModelInfer``, raw bytes in, the normalised mean out); reported next to HTTP (``grpc_vs_http``).

Each phase sends at most ``requests`` requests (after a few uncounted warm-up ones) and stops early at
``duration_s``. Absolute numbers drift between machines, so the result reports gateway / engine ratios
(throughput and latency percentiles) next to them. A benchmark, never a test: nothing here asserts speed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import platform
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from d2v.core.errors import ConfigError, Unavailable

PERCENTILES = (50, 90, 99)

# The load generator waits as long as a full queue takes: 16 clients x 8 base-size images at ~2 items/s is
# ~70 s per round on 2 cores, and a client that gave up at 60 s was counted as an error (peers, 2026-12-02).
CLIENT_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------------------------- inputs
def sample_inputs(modality: str, preprocessing: dict, items: int) -> list[Any]:
    """``items`` deterministic raw inputs: strings (text) or encoded PNG / WAV bytes."""
    rng = np.random.default_rng(0)
    if modality == "text":
        words = [
            "data2vec",
            "learns",
            "contextualized",
            "targets",
            "for",
            "speech",
            "vision",
            "and",
            "language",
            "with",
            "one",
            "objective",
        ]
        return [" ".join(rng.choice(words, size=12 + i % 5)) for i in range(items)]
    if modality == "image":
        from PIL import Image

        size = int(preprocessing.get("image_size", 224))
        out = []
        for _ in range(items):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
            out.append(buf.getvalue())
        return out
    import soundfile as sf

    rate = int(preprocessing.get("sample_rate", 16_000))
    out = []
    for _ in range(items):
        buf = io.BytesIO()
        sf.write(buf, (rng.standard_normal(rate) * 0.1).astype(np.float32), rate, format="WAV")  # 1 s
        out.append(buf.getvalue())
    return out


# -------------------------------------------------------------------------------------------- driver
async def drive(
    call: Callable[[], Awaitable[None]], *, requests: int, concurrency: int, duration_s: float, warmup: int
) -> dict[str, Any]:
    """Run ``call`` ``requests`` times from ``concurrency`` workers, stopping early after ``duration_s``."""
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:  # a benchmark reports failures; it does not stop on them
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, errors, time.perf_counter() - start)


def summarize(latencies: list[float], errors: list[str], seconds: float) -> dict[str, Any]:
    lat = np.asarray(latencies, dtype=np.float64) * 1000.0
    out: dict[str, Any] = {
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": seconds,
        "requests_per_s": len(latencies) / seconds if seconds > 0 else 0.0,
    }
    for p in PERCENTILES:
        out[f"p{p}_ms"] = float(np.percentile(lat, p)) if lat.size else None
    if errors:
        out["first_error"] = errors[0]
    return out


def ratios(gateway: dict[str, Any], engine: dict[str, Any]) -> dict[str, float | None]:
    """gateway / engine: throughput (< 1 = the gateway is slower) and latency percentiles (> 1 = slower)."""

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out = {"requests_per_s": div(gateway["requests_per_s"], engine["requests_per_s"])}
    for p in PERCENTILES:
        out[f"p{p}_ms"] = div(gateway[f"p{p}_ms"], engine[f"p{p}_ms"])
    return out


# ---------------------------------------------------------------------------------------------- phases
async def _engine_phase(
    manifest, model_dir: Path, settings, raws: list[Any], bounds: dict
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The load sent straight to the engine; returns its figures and the engine's ``describe()`` (with
    ``--engine auto``: what was chosen and why)."""
    from d2v.core.contract import MEAN_OUTPUT, TOKEN_MASK_OUTPUT, feeds
    from d2v.models.preprocessing import build_preprocessor
    from d2v.runtime.engines import build_engine

    if settings.engine == "triton" and settings.triton_mode == "ensemble":
        raise ConfigError("d2v bench serve compares against tensors sent to the engine: use --triton-mode encoder")
    pre = build_preprocessor(manifest.preprocessing, model_dir)
    inputs = feeds(manifest, pre.collate([pre.load_item(r) for r in raws]))
    engine = build_engine(manifest, model_dir, settings.engine_config())
    await engine.load()
    try:
        await engine.warmup()

        async def call() -> None:
            await engine.embed(inputs, [MEAN_OUTPUT, TOKEN_MASK_OUTPUT])

        return await drive(call, **bounds), engine.describe()
    finally:
        await engine.close()


class _Uvicorn:
    """The app under uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="d2v-bench-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float) -> None:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url) as client:
            while time.monotonic() < deadline:
                if not self.thread.is_alive():
                    raise Unavailable("the gateway exited during startup (see the log above)")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise Unavailable(f"the gateway was not ready after {timeout:.0f} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def _gateway_phase(
    manifest, settings, raws: list[Any], bounds: dict, timeout: float, protocol: str = "http"
) -> dict[str, dict[str, Any]]:
    """The HTTP phase (``gateway``) and, for ``protocol="grpc"``, the same load over KServe v2 gRPC (``grpc``)
    against the same running server, one after the other."""
    import httpx

    from .app import create_app

    if manifest.modality == "text":
        values: list[str] = list(raws)
    else:
        values = [base64.b64encode(r).decode() for r in raws]
    body = {"model": manifest.name, "input": values}
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would drown the table
    grpc_port = _free_port() if protocol == "grpc" else 0
    server = _Uvicorn(create_app(settings.model_copy(update={"grpc_port": grpc_port})))
    phases: dict[str, dict[str, Any]] = {}
    try:
        await server.start(timeout)
        limits = httpx.Limits(max_connections=bounds["concurrency"], max_keepalive_connections=bounds["concurrency"])
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=CLIENT_TIMEOUT_S) as client:

            async def call() -> None:
                resp = await client.post(f"/v1/embed/{manifest.modality}", json=body)
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:120]}")

            phases["gateway"] = await drive(call, **bounds)
        if grpc_port:
            phases["grpc"] = await _grpc_phase(f"127.0.0.1:{grpc_port}", manifest, raws, bounds)
        return phases
    finally:
        server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _grpc_phase(target: str, manifest, raws: list[Any], bounds: dict) -> dict[str, Any]:
    """ModelInfer with the raw items (BYTES [B, 1]) asking for the normalised mean, as the HTTP phase gets it;
    one channel per concurrent worker, as the HTTP phase has one connection each."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from d2v.core.contract import MEAN_OUTPUT

    items = [r.encode() if isinstance(r, str) else r for r in raws]
    request = service_pb2.ModelInferRequest(model_name=manifest.name)
    request.inputs.add(name=manifest.triton.raw_input, datatype="BYTES", shape=[len(items), 1])
    request.raw_input_contents.append(b"".join(len(i).to_bytes(4, "little") + i for i in items))
    request.outputs.add(name=MEAN_OUTPUT)
    request.parameters["normalize"].bool_param = True
    channels = [grpc.aio.insecure_channel(target) for _ in range(bounds["concurrency"])]
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
    turn = 0
    try:

        async def call() -> None:
            nonlocal turn
            turn += 1
            await stubs[turn % len(stubs)].ModelInfer(request, timeout=CLIENT_TIMEOUT_S)

        return await drive(call, **bounds)
    finally:
        for channel in channels:
            await channel.close()


# ------------------------------------------------------------------------------------------------- entry
def bench_serve(
    settings,
    *,
    requests: int = 200,
    concurrency: int = 4,
    items: int = 1,
    duration_s: float = 30.0,
    warmup: int = 2,
    startup_timeout_s: float = 120.0,
    protocol: str = "http",
) -> dict[str, Any]:
    """Every phase for the first model ``settings`` selects (``protocol="grpc"`` adds the gRPC one); returns the
    JSON-able result."""
    from d2v.runtime.store import discover

    if requests < 1 or concurrency < 1 or items < 1 or duration_s <= 0 or warmup < 0:
        raise ConfigError("requests, concurrency and items must be >= 1, duration > 0 and warmup >= 0")
    manifest, model_dir = discover(settings.store, settings.models)[0]
    settings = settings.model_copy(update={"models": [str(model_dir)], "warmup": True})
    raws = sample_inputs(manifest.modality, manifest.preprocessing, items)
    bounds = {"requests": requests, "concurrency": concurrency, "duration_s": duration_s, "warmup": warmup}

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        engine, described = await _engine_phase(manifest, model_dir, settings, raws, bounds)
        # The gateway runs exactly what the engine phase ran (auto resolved once).
        chosen = {"engine": described.get("engine", settings.engine), "variant": described.get("variant")}
        chosen = {k: v for k, v in chosen.items() if v is not None} if settings.engine == "auto" else {}
        served = settings.model_copy(update=chosen)
        gateway = await _gateway_phase(manifest, served, raws, bounds, startup_timeout_s, protocol)
        return {"engine": engine, **gateway}, described

    phases, described = asyncio.run(run())
    return {
        "model": manifest.name,
        "modality": manifest.modality,
        "engine_kind": described.get("engine", settings.engine),
        "variant": described.get("variant") or settings.variant or manifest.default_variant,
        **({"selection": described["selection"]} if "selection" in described else {}),
        "items_per_request": items,
        "concurrency": concurrency,
        "max_requests": requests,
        "max_seconds": duration_s,
        "machine": platform.processor() or platform.machine(),
        **{name: {**r, "items_per_s": r["requests_per_s"] * items} for name, r in phases.items()},
        "gateway_vs_engine": ratios(phases["gateway"], phases["engine"]),
        **({"grpc_vs_http": ratios(phases["grpc"], phases["gateway"])} if "grpc" in phases else {}),
    }


def format_table(result: dict[str, Any]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return format(value, fmt) if value is not None else "-"

    head = (
        f"{result['model']} ({result['modality']}, {result['engine_kind']}): "
        f"{result['items_per_request']} item(s)/request, concurrency {result['concurrency']}"
    )
    lines = [head, f"{'':<12}{'requests':>9}{'errors':>8}{'req/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"]
    for label in [p for p in ("engine", "gateway", "grpc") if p in result]:
        r = result[label]
        lines.append(
            f"{label:<12}{r['requests']:>9}{r['errors']:>8}{r['requests_per_s']:>10.1f}"
            + "".join(f"{num(r[f'p{p}_ms'], '.2f'):>10}" for p in PERCENTILES)
        )
    for label, key in (("gateway/eng", "gateway_vs_engine"), ("grpc/http", "grpc_vs_http")):
        if key in result:
            x = result[key]
            lines.append(
                f"{label:<12}{'':>9}{'':>8}{num(x['requests_per_s'], '.2f'):>10}"
                + "".join(f"{num(x[f'p{p}_ms'], '.2f'):>10}" for p in PERCENTILES)
            )
    return "\n".join(lines)
