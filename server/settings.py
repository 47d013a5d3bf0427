"""Server settings: parsed once at the edge (CLI flags over ``D2V_*`` environment variables) and passed down.

Nothing else in ``d2v.server`` reads the environment. List-valued variables (``D2V_MODELS``,
``D2V_API_KEYS``, ``D2V_URL_ALLOWLIST``) accept a comma-separated string or a JSON list.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from d2v.core.paths import default_store
from d2v.runtime.engines import EngineConfig

from .url_policy import URLPolicy

EngineName = Literal["auto", "onnxruntime", "openvino", "triton"]

# Set by ``d2v serve --workers N`` so every uvicorn worker process rebuilds exactly the parent's settings.
SETTINGS_ENV = "D2V_SERVER_SETTINGS_JSON"


def _split_list(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            import json

            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="D2V_", extra="forbid")

    # --- what to serve
    store: Path = Field(default_factory=default_store, description="model store: <store>/<name>/model.json")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="model names in the store or model directories; empty = all in the store"
    )
    engine: EngineName = Field("auto", description="auto: the fastest measured engine/variant within min_cosine")
    variant: str | None = Field(None, description="ONNX variant (fp32, int8, ...); default: the manifest's")
    intra_op_threads: int = Field(0, ge=0, description="ORT / OpenVINO CPU threads per model (0 = runtime default)")
    openvino_precision: Literal["bf16", "f32"] = "f32"  # for fp32 variants; a bf16 variant always runs bf16
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_mode: Literal["encoder", "ensemble"] = "encoder"
    triton_timeout_s: float = Field(30.0, gt=0)
    min_cosine: float = Field(0.999, gt=0, le=1, description="auto: worst pooled cosine vs fp32 to accept a variant")
    calibration_budget_s: float = Field(10.0, gt=0, description="auto: seconds per model to measure candidates")

    # --- network
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    grpc_port: int = Field(8081, ge=0, le=65535, description="KServe v2 gRPC on the same host; 0 = off")
    grpc_tls_cert: Path | None = Field(None, description="PEM certificate chain: serve gRPC over TLS (with the key)")
    grpc_tls_key: Path | None = Field(None, description="PEM private key of grpc_tls_cert")
    workers: int = Field(1, ge=1)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    graceful_timeout_s: float = Field(30.0, ge=0, description="time in-flight requests get to finish on shutdown")

    # --- limits
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_items_per_request: int = Field(256, gt=0)
    max_input_tokens: int | None = Field(None, gt=1, description="text tokens per item; default: the model's")
    truncate: bool = Field(True, description="truncate over-long text by default (requests may opt out)")
    max_text_chars: int = Field(100_000, gt=0, description="characters per text item (tokenizer-abuse guard)")
    max_image_pixels: int = Field(40_000_000, gt=0, description="decoded width*height (decompression-bomb guard)")
    max_audio_seconds: float | None = Field(None, gt=0, description="default: the model's max_seconds")
    max_audio_sample_rate: int = Field(192_000, gt=0)
    allow_url_fetch: bool = False
    url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="URL prefixes that may be fetched when allow_url_fetch is on"
    )
    url_fetch_timeout_s: float = Field(10.0, gt=0)

    # --- batching
    max_batch_size: int = Field(32, gt=0, description="items per engine call (capped by the manifest's)")
    max_batch_tokens: int = Field(16_384, gt=0, description="padded tokens per text batch (max_len * n)")
    max_batch_samples: int = Field(16_000 * 240, gt=0, description="padded audio samples per batch")
    # 0: continuous batching (TEI's way): an idle engine takes what is queued at once, and everything that
    # arrives while a batch runs forms the next one; > 0 also waits that long to fill a batch when idle.
    max_wait_ms: float = Field(0.0, ge=0, description="extra wait to fill a batch when the engine is idle")
    max_queue: int = Field(1024, gt=0, description="queued items per model before 429")
    # Admission (before any decoding): what one model may have in flight, from arrival to response.
    max_concurrent_requests: int = Field(512, gt=0, description="requests in flight per model before 429")
    max_inflight_bytes: int = Field(256 * 1024 * 1024, gt=0, description="request bytes in flight per model")
    retry_after_s: float = Field(1.0, gt=0)
    preprocess_workers: int = Field(0, ge=0, description="threads decoding inputs (0 = min(8, CPUs))")
    warmup: bool = True

    @field_validator("models", "api_keys", "url_allowlist", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if self.allow_url_fetch and not self.url_allowlist:
            raise ValueError("allow_url_fetch needs a non-empty url_allowlist (D2V_URL_ALLOWLIST)")
        URLPolicy(self.url_allowlist)  # every entry must normalise: refuse a bad allow-list at start-up
        if self.max_items_per_request > self.max_queue:
            raise ValueError("max_items_per_request must not exceed max_queue")
        if self.max_body_bytes > self.max_inflight_bytes:
            raise ValueError("max_body_bytes must not exceed max_inflight_bytes (one request could never run)")
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("gRPC TLS needs both grpc_tls_cert and grpc_tls_key")
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"grpc_port and port are both {self.port}; give gRPC its own port (or 0 = off)")
        return self

    def api_key_values(self) -> list[bytes]:
        return [k.get_secret_value().encode() for k in self.api_keys]

    def engine_config(self) -> EngineConfig:
        """The runtime's engine settings, taken from these (the runtime knows nothing of the server)."""
        return EngineConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EngineConfig)})
