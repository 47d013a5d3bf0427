"""Teacher target construction (spec §1.3): normalise each of the top-K layers, average, normalise again.

One pure function. All norms are parameter-free and computed in fp32 (spec §8.5, §8.7):

* ``"instance"``: each channel of each example normalised over **time** (fairseq
  ``F.instance_norm(x.transpose(1, 2))``: biased variance, eps 1e-5). With a ``padding_mask`` the mean and
  variance are taken over real steps only (fairseq never pads in pretraining, spec §8.6).
* ``"layer"``: ``F.layer_norm`` over channels per step, eps 1e-5, no affine.
* ``"none"``.

Recipes (per layer -> after averaging): v1 audio instance -> none (K 8); v1 text layer -> none (K 10); v1 vision
layer -> layer (K 6); v2 audio/text instance -> none; v2 image instance -> layer; v2 text Large layer -> instance.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from d2v.core.errors import ConfigError, InvalidInput

__all__ = ["EPS", "Norm", "build_targets", "instance_norm", "normalize"]

Norm = Literal["instance", "layer", "none"]
EPS = 1e-5


def instance_norm(x: Tensor, padding_mask: Tensor | None = None, eps: float = EPS) -> Tensor:
    """Per-example, per-channel normalisation over time: (B, T, D) -> (B, T, D).

    Without padding this is exactly ``F.instance_norm(x.transpose(1, 2)).transpose(1, 2)``. With a
    ``padding_mask`` (bool (B, T), True = padded) the statistics use real steps only and padded outputs are 0.
    """
    if padding_mask is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    valid = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    n = valid.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1, 1)
    mean = (x * valid).sum(dim=1, keepdim=True) / n  # (B, 1, D)
    var = ((x - mean).square() * valid).sum(dim=1, keepdim=True) / n  # biased, like F.instance_norm
    return (x - mean) * torch.rsqrt(var + eps) * valid


def normalize(x: Tensor, norm: Norm, padding_mask: Tensor | None = None) -> Tensor:
    """Apply one parameter-free norm (see module docstring) to (B, T, D)."""
    match norm:
        case "instance":
            return instance_norm(x, padding_mask)
        case "layer":
            return F.layer_norm(x, x.shape[-1:], eps=EPS)
        case "none":
            return x
        case _:
            raise ConfigError(f"unknown target norm {norm!r}; expected 'instance', 'layer' or 'none'")


def build_targets(
    layer_outputs: list[Tensor],
    top_k: int,
    layer_norm: Norm,
    final_norm: Norm,
    padding_mask: Tensor | None = None,
) -> Tensor:
    """data2vec regression targets from the teacher's per-layer tensors.

    Args:
        layer_outputs: per layer, bottom to top, the already chosen tensor (B, T, D) (FFN output for v1 audio/text
            and v2, block output for v1 vision), extra tokens (CLS) already removed.
        top_k: average the last ``top_k`` layers.
        layer_norm: norm applied to each of those layers before averaging.
        final_norm: norm applied to the average.
        padding_mask: bool (B, T), True = padded; excluded from instance-norm statistics. Padded positions of the
            result are 0.

    Returns:
        fp32 (B, T, D) targets; select the masked positions afterwards.
    """
    if not 1 <= top_k <= len(layer_outputs):
        raise ConfigError(f"top_k must be in [1, {len(layer_outputs)}] (number of layers), got {top_k}")
    layers = layer_outputs[-top_k:]
    shape = layers[0].shape
    if len(shape) != 3 or any(t.shape != shape for t in layers):
        raise InvalidInput(f"layer outputs must all be (B, T, D) of one shape, got {[tuple(t.shape) for t in layers]}")
    if padding_mask is not None and padding_mask.shape != shape[:2]:
        raise InvalidInput(f"padding_mask shape {tuple(padding_mask.shape)} != (B, T) = {tuple(shape[:2])}")
    y = sum(normalize(t.float(), layer_norm, padding_mask) for t in layers) / top_k  # (B, T, D)
    y = normalize(y, final_norm, padding_mask)
    if padding_mask is not None:
        y = y.masked_fill(padding_mask.unsqueeze(-1), 0.0)
    return y
