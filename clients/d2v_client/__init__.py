"""Client SDK for the data2vec embedding server. Depends on httpx and numpy only.

>>> from d2v_client import Client
>>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
...     vectors = client.embed_text(["hello", "world"])

The optional Triton transport lives in :mod:`d2v_client.triton` (``pip install 'd2v-client[triton]'``).
"""

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
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "D2VClientError",
    "D2VConnectionError",
    "D2VTimeoutError",
    "EmbedOptions",
    "Embeddings",
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
