"""Client SDK for the data2vec embedding server. Depends on httpx and numpy only.

>>> from d2v_client import Client
>>> with Client() as client:  # doctest: +SKIP  ($D2V_SERVER_URL, else http://127.0.0.1:8080)
...     vectors = client.embed_text(["hello", "world"])

The gRPC clients (:class:`GrpcClient`, :class:`AsyncGrpcClient`: KServe v2, to the gateway or straight to a
Triton ensemble) need the ``grpc`` extra (``pip install 'd2v-client[grpc]'``); they are imported on first use.
"""

from typing import Any

from d2v_client._encode import decode_vector, encode_vector, to_data_uri
from d2v_client._http import RetryPolicy
from d2v_client._types import Embeddings, EmbedOptions, Limits, ModelInfo, ServerInfo
from d2v_client._version import __version__
from d2v_client.async_client import AsyncClient
from d2v_client.client import Client
from d2v_client.errors import (
    AuthenticationError,
    BadRequestError,
    D2VClientError,
    D2VConnectionError,
    D2VTimeoutError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ServerError,
    ServiceUnavailableError,
)

__all__ = [
    "AsyncClient",
    "AsyncGrpcClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "D2VClientError",
    "D2VConnectionError",
    "D2VTimeoutError",
    "EmbedOptions",
    "Embeddings",
    "GrpcClient",
    "Limits",
    "ModelInfo",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RetryPolicy",
    "ServerError",
    "ServerInfo",
    "ServiceUnavailableError",
    "__version__",
    "decode_vector",
    "encode_vector",
    "to_data_uri",
]

_LAZY = {"GrpcClient": "d2v_client.grpc_client", "AsyncGrpcClient": "d2v_client.async_grpc_client"}


def __getattr__(name: str) -> Any:
    """``GrpcClient`` / ``AsyncGrpcClient`` on first use, so ``import d2v_client`` needs neither grpcio nor
    tritonclient."""
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as exc:
            raise ImportError(f"{name} needs the grpc extra: pip install 'd2v-client[grpc]' ({exc})") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'd2v_client' has no attribute {name!r}")
