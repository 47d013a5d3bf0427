"""Embedding extraction: the one implementation used by probes, the export wrapper and tests.

Token embeddings are the average of the top-K block outputs, each normalised without parameters:
``layer`` = LayerNorm over channels per token (default), ``target`` = the recipe's pretraining-target
normalisation (``model.config.targets``: instance norm over time with padding excluded, and/or LayerNorm,
then the recipe's post-average norm). Pooled vectors always come from the ``layer``-normalised average:
an instance-normalised layer has zero mean over time in every channel, so its time-average is exactly 0.

Everything here is tensor arithmetic without Python branches on tensor values, so ``torch.onnx`` can trace it;
``top_k`` may be a tensor (the export's ``d2v_top_k`` input), in which case all layers are weighted by
``(index >= L - k) / k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from d2v.core.errors import InvalidInput
from d2v.models.config import EmbeddingConfig
from d2v.models.targets import Norm, normalize


class Embeddings(NamedTuple):
    tokens: Tensor  # [B, T', D] float32, zero at padding; image: patches only (no CLS)
    token_mask: Tensor  # [B, T'] int64, 1 = real token
    mean: Tensor  # [B, D] masked mean of the layer-normalised average
    cls: Tensor | None  # [B, D] first token of the layer-normalised average (image CLS, text <s>); audio None


def layer_average(
    layers: Sequence[Tensor],
    padding_mask: Tensor | None,
    top_k: int | Tensor,
    norm: Norm = "layer",
    *,
    final_norm: Norm = "none",
) -> Tensor:
    """Mean of the top ``top_k`` of ``layers`` (each [B, T, D], bottom to top), each normalised by ``norm``,
    then ``final_norm`` on the average; fp32, zero at padded positions. ``top_k`` as an int64 tensor selects
    the layers by weights instead of slicing (traceable; clamped to [1, L])."""
    num_layers = len(layers)
    if isinstance(top_k, Tensor):
        k = top_k.reshape(()).clamp(1, num_layers).to(torch.float32)
        index = torch.arange(num_layers, device=k.device, dtype=torch.float32)
        weights = (index >= num_layers - k).to(torch.float32) / k  # (L,)
        stacked = torch.stack([normalize(x.float(), norm, padding_mask) for x in layers])  # (L, B, T, D)
        average = (stacked * weights.view(-1, 1, 1, 1)).sum(dim=0)
    else:
        if not 1 <= top_k <= num_layers:
            raise InvalidInput(f"top_k must be in [1, {num_layers}], got {top_k}")
        top = layers[num_layers - top_k :]
        average = torch.stack([normalize(x.float(), norm, padding_mask) for x in top]).mean(dim=0)
    average = normalize(average, final_norm, padding_mask)
    if padding_mask is not None:
        average = average.masked_fill(padding_mask.unsqueeze(-1), 0.0)
    return average


def masked_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean over time of real positions: [B, T, D] -> [B, D]."""
    if padding_mask is None:
        return x.mean(dim=1)
    real = (~padding_mask).to(x.dtype).unsqueeze(-1)
    return (x * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)


def extract_embeddings(
    model: torch.nn.Module,
    inputs: Tensor,
    attention_mask: Tensor | None = None,
    cfg: EmbeddingConfig | None = None,
    *,
    top_k: Tensor | None = None,
) -> Embeddings:
    """Encode a batch and return token embeddings and pooled vectors (contract in docs/contracts.md).

    ``model`` is a ``Data2VecModel`` (call ``.eval()`` first); ``attention_mask`` [B, T] (audio: [B, S]
    samples) with 1 = real, or None for unpadded batches and images. ``top_k`` (int64 tensor) overrides
    ``cfg.top_k`` with the traceable weighted selection.
    """
    cfg = cfg or EmbeddingConfig()
    padding_mask = None if attention_mask is None else attention_mask.eq(0)
    out = model.encode(inputs, padding_mask)
    blocks = [layer.block for layer in out.layers]
    k = top_k if top_k is not None else cfg.top_k
    extra = model.num_extra_tokens
    body_padding = out.padding_mask[:, extra:]

    # Per-token LayerNorm does not mix positions, so the CLS token can share the pass with the body.
    layer_normed = layer_average(blocks, out.padding_mask, k, "layer")
    if cfg.norm == "target":
        targets = model.config.targets
        # Targets never include extra tokens: they must not enter the statistics over time.
        tokens = layer_average(
            [b[:, extra:] for b in blocks], body_padding, k, targets.layer_norm, final_norm=targets.final_norm
        )
    else:
        tokens = layer_normed[:, extra:]
    mean = masked_mean(layer_normed[:, extra:], body_padding)
    cls = layer_normed[:, 0] if model.modality in ("image", "text") else None
    return Embeddings(tokens, (~body_padding).to(torch.int64), mean, cls)
