"""``d2v embed``: a few inputs through the SDK (HTTP, or KServe v2 gRPC with ``--grpc``); vectors printed as
JSON lines or written to ``.npy``."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from d2v.core.errors import InvalidInput, Unauthorized, Unavailable
from d2v_client import AuthenticationError, BadRequestError, Client, D2VClientError, RetryPolicy

from .connection import api_key, grpc_target, server_url

_MODALITY_WORDS = ("text", "image", "audio")


def parse_inputs(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``(modality, inputs)`` from the positional texts and ``--image`` / ``--audio``.

    Raises:
        InvalidInput: no inputs, or texts mixed with files.
    """
    texts = list(args.texts)
    if texts and texts[0] in _MODALITY_WORDS and (len(texts) > 1 or args.image or args.audio):
        word = texts.pop(0)
        if word != "text":  # `d2v embed image a.png` reads like `--image a.png`
            args.image, args.audio = (
                (args.image + texts, args.audio) if word == "image" else (args.image, args.audio + texts)
            )
            texts = []
    files = [("image", p) for p in args.image] + [("audio", p) for p in args.audio]
    if texts and files:
        raise InvalidInput("give either texts or --image/--audio files, not both")
    if files:
        return files[0][0], [p for _, p in files]
    if not texts:
        raise InvalidInput("nothing to embed: pass texts, --image PATH or --audio PATH")
    return "text", texts


def run_embed(args: argparse.Namespace) -> int:
    """Run the command.

    Raises:
        InvalidInput, Unauthorized, Unavailable: mapped from the SDK's errors (the CLI prints the message).
    """
    modality, inputs = parse_inputs(args)
    options = {"model": args.model, "pooling": args.pooling, "normalize": args.normalize, "dimensions": args.dimensions}
    grpc = getattr(args, "grpc", False)
    where = grpc_target(args) if grpc else server_url(args)
    try:
        retry = RetryPolicy(max_retries=max(0, args.retries))
        if grpc:
            from d2v_client import GrpcClient

            client = GrpcClient(where, api_key=api_key(args), timeout=args.timeout, retry=retry)
        else:
            client = Client(where, api_key=api_key(args), timeout=args.timeout, retry=retry)
        with client:
            result = client.embed(modality, inputs, **options)
    except BadRequestError as exc:
        raise InvalidInput(exc.message) from exc
    except AuthenticationError as exc:
        raise Unauthorized(exc.message) from exc
    except D2VClientError as exc:
        raise Unavailable(f"{where}: {exc}") from exc
    if args.output:
        _save(args.output, result)
        print(f"wrote {len(inputs)} embedding(s) to {args.output}", file=sys.stderr)
        return 0
    for label, vector in zip(inputs, result, strict=True):
        print(json.dumps({"input": label, "shape": list(vector.shape), "embedding": vector.tolist()}))
    return 0


def _save(path: str, result: np.ndarray | list[np.ndarray]) -> None:
    if isinstance(result, list):  # token-level: ragged, so an object array (np.load(..., allow_pickle=True))
        arr = np.empty(len(result), dtype=object)
        arr[:] = result
        np.save(path, arr, allow_pickle=True)
    else:
        np.save(path, result)
