"""The typed API edge: pydantic request / response models, separate from the internal dataclasses.

``/v1/embeddings`` follows OpenAI's wire format (openai-python ``embedding_create_params.py``) plus two
extensions: ``modality`` (Infinity-style; send it with ``extra_body``) and media items
``{"type": "image"|"audio", "data": "<base64 | data: URI | allow-listed URL>"}`` in ``input``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ModalityName = Literal["text", "image", "audio"]
EncodingFormat = Literal["float", "base64"]
PoolingName = Literal["mean", "cls", "none"]
# The declared schema is what the server accepts structurally (clients generated from /openapi.json must not
# send what is then refused): no empty strings, lists or token-id lists, no negative ids. What depends on the
# model (vocabulary size, token or pixel limits, embedding size) is checked per request with a 400 / 413.
NonEmptyStr = Annotated[str, Field(min_length=1)]
TokenIdList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class MediaItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: ModalityName
    data: NonEmptyStr = Field(description="text for type=text; base64, a data: URI or an allow-listed URL otherwise")


class EmbeddingsRequest(BaseModel):
    # OpenAI-compatible clients send fields we do not use (e.g. ``user``); ignore rather than refuse them.
    # Strict: a JSON body is typed already, so ``"truncate": 0`` or ``"dimensions": "8"`` is refused as the
    # schema says, not coerced.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(None, description="optional when one model serves the input's modality")
    input: (
        NonEmptyStr
        | TokenIdList
        | Annotated[list[TokenIdList], Field(min_length=1)]
        | Annotated[list[NonEmptyStr | MediaItem], Field(min_length=1)]
    )
    encoding_format: EncodingFormat = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    modality: ModalityName | None = Field(None, description="extension: the modality of string inputs")
    truncate: bool | None = Field(None, description="extension: false refuses over-long text with 413")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(description="model tokens: text tokens, audio frames or image patches")
    total_tokens: int
    items: int = Field(description="extension: inputs embedded")


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class EmbedOptions(BaseModel):
    """Options of the native ``/v1/embed/{modality}`` endpoint (JSON body fields or multipart form fields)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="optional when one model serves the modality")
    pooling: PoolingName | None = Field(None, description="default: the model's; none = token-level")
    normalize: bool = True
    layers: Annotated[int, Field(ge=1)] | None = Field(None, description="top-K layers to average (override)")
    dimensions: Annotated[int, Field(ge=1)] | None = None
    encoding_format: EncodingFormat = "float"
    truncate: bool | None = None


class EmbedRequest(EmbedOptions):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON only: multipart form fields are strings

    input: Annotated[list[NonEmptyStr], Field(min_length=1)] | NonEmptyStr = Field(
        description="strings for text; base64, data: URIs or allow-listed URLs for image/audio"
    )


class NativeEmbedding(BaseModel):
    index: int
    embedding: list[float] | list[list[float]] | str = Field(description="base64: little-endian float32, row-major")
    shape: list[int] = Field(description="[dim] pooled, [tokens, dim] for pooling=none")
    tokens: int


class EmbedResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    modality: ModalityName
    pooling: PoolingName
    normalized: bool
    dim: int
    data: list[NativeEmbedding]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "d2v"
    modality: ModalityName
    dim: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for the error statuses a route can answer, all with the one error body."""
    return {status: {"model": ErrorBody, "description": _ERROR_MEANINGS[status]} for status in statuses}


_ERROR_MEANINGS = {
    400: "invalid input (undecodable media, unknown option value, over a model limit that is not a size)",
    401: "missing or wrong API key",
    404: "unknown model",
    413: "too large: body, item count, text, tokens, audio length or image pixels (the message names the limit)",
    415: "unsupported content type or media type",
    422: "the body does not match this schema",
    429: "overloaded: retry after the Retry-After header's seconds",
    503: "warming up, draining or the engine is unavailable (Retry-After)",
}
EMBED_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 429, 503)
