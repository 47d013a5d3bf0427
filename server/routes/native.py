"""``POST /v1/embed/{text|image|audio}``: the native endpoint, with every option.

Body: JSON ``{"model"?, "input": [...], "pooling", "normalize", "layers", "dimensions", "encoding_format",
"truncate"}`` (strings for text; base64 / data URIs for image and audio), or, for image and audio,
``multipart/form-data`` with repeatable ``file`` fields and the options as form fields.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from d2v.core.errors import InvalidInput, UnsupportedMediaType
from d2v.runtime.postprocess import encode

from ..auth import require_api_key
from ..schemas import EMBED_ERRORS, EmbedOptions, EmbedRequest, EmbedResponse, ModalityName
from .common import check_count, embed_and_shape, resolve_media

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["native"])

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": EmbedRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        **EmbedOptions.model_json_schema()["properties"],
                    },
                }
            },
        },
    }
}


async def _from_json(request: Request) -> tuple[EmbedOptions, list[str]]:
    body = EmbedRequest.model_validate_json(await request.body())
    values = [body.input] if isinstance(body.input, str) else list(body.input)
    check_count(len(values), request.app.state.settings)
    return body, values


async def _from_multipart(request: Request, modality: str) -> tuple[EmbedOptions, list[bytes]]:
    if modality == "text":
        raise UnsupportedMediaType("text takes a JSON body; multipart uploads are for image and audio")
    limit = request.app.state.settings.max_items_per_request
    form = await request.form(max_files=limit, max_fields=32)
    try:
        files = form.getlist("file")
        options = EmbedOptions.model_validate({k: v for k, v in form.items() if k != "file"})
        check_count(len(files), request.app.state.settings)
        raws = []
        for i, upload in enumerate(files):
            if not isinstance(upload, UploadFile):
                raise InvalidInput(f"file[{i}] must be a file upload, not a form value")
            ctype = (upload.content_type or "").lower()
            if ctype and not (ctype.startswith(f"{modality}/") or ctype == "application/octet-stream"):
                raise UnsupportedMediaType(f"file[{i}] has content type {ctype!r}; expected {modality}/*")
            raws.append(await upload.read())
    finally:
        await form.close()
    return options, raws


@router.post("/v1/embed/{modality}", response_model=EmbedResponse, responses=EMBED_ERRORS, openapi_extra=_REQUEST_BODY)
async def embed(modality: ModalityName, request: Request) -> JSONResponse:
    state = request.app.state
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        options, raws = await _from_json(request)
        nbytes = len(await request.body())  # already read and cached
    elif ctype == "multipart/form-data":
        options, raws = await _from_multipart(request, modality)
        nbytes = sum(len(r) for r in raws)
    else:
        raise UnsupportedMediaType(f"unsupported content type {ctype or '(none)'!r}: send JSON or multipart/form-data")
    model = state.registry.resolve(modality, options.model)  # before decoding: fail cheap
    pooling = options.pooling or model.manifest.pooling
    with model.admission.admit(len(raws), nbytes):  # refused while still undecoded bytes
        if ctype == "application/json" and modality != "text":
            raws = await resolve_media(request, raws, modality)
        vectors, tokens = await embed_and_shape(
            model,
            raws,
            pooling=pooling,
            top_k=options.layers,
            normalize=options.normalize,
            dimensions=options.dimensions,
            truncate=options.truncate,
        )
    total = sum(tokens)
    payload = {
        "object": "list",
        "model": model.name,
        "modality": modality,
        "pooling": pooling,
        "normalized": options.normalize,
        "dim": int(vectors[0].shape[-1]),
        "data": [
            {"index": i, "embedding": encode(v, options.encoding_format), "shape": list(v.shape), "tokens": t}
            for i, (v, t) in enumerate(zip(vectors, tokens, strict=True))
        ],
        "usage": {"prompt_tokens": total, "total_tokens": total, "items": len(vectors)},
    }
    return JSONResponse(payload)
