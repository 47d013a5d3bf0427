"""Image front end: pixels [B, C, H, W] -> CLS + patch tokens [B, 1 + N, D]."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from d2v.core.errors import InvalidInput
from d2v.models.encoders import FrontEndOutput, MaskMode
from d2v.models.masking import gather_kept, visible_indices


def sincos_positions_2d(dim: int, grid_size: int) -> Tensor:
    """MAE's fixed 2-D sin-cos embedding [grid*grid, dim]: first half encodes the column (x), second the
    row (y), each as [sin | cos] over ``dim/4`` frequencies (MAE ``get_2d_sincos_pos_embed``)."""
    if dim % 4:
        raise ValueError("sin-cos positions need dim divisible by 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")

    def encode(coord: Tensor) -> Tensor:
        angles = coord.reshape(-1, 1).double() * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(xs), encode(ys)], dim=1).float()


class ImageEncoder(nn.Module):
    """Conv2d patch embedding -> [mask] -> positions -> CLS token -> context LayerNorm (post-LN recipes).

    Args:
        dim: Transformer width.
        image_size, patch_size, in_chans: input geometry (square images of exactly ``image_size``).
        positions: ``none`` (relative bias lives in the Transformer), ``learned`` (absolute, CLS included)
            or ``sincos`` (fixed, patches only).
        dropout: dropout on the token sequence.
        context_norm: LayerNorm before the first block (data2vec 2.0 post-LN recipes).
        norm_eps: its epsilon.
    """

    num_extra_tokens = 1  # the CLS token, first in the sequence

    def __init__(
        self,
        *,
        dim: int,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        positions: Literal["none", "learned", "sincos"] = "none",
        dropout: float = 0.0,
        context_norm: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.in_chans = in_chans
        self.grid_size = image_size // patch_size
        num_patches = self.grid_size**2
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = positions
        self.position_embedding = nn.Parameter(torch.zeros(1, num_patches + 1, dim)) if positions == "learned" else None
        if positions == "sincos":  # fixed, so rebuilt rather than stored in checkpoints
            self.register_buffer("sincos", sincos_positions_2d(dim, self.grid_size)[None], persistent=False)
        self.context_norm = nn.LayerNorm(dim, eps=norm_eps) if context_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def local_features(self, pixel_values: Tensor, padding_mask: Tensor | None = None) -> FrontEndOutput:
        """pixel_values [B, C, H, W] -> patch embeddings [B, N, D] (row-major grid). Images are never padded."""
        expected = (self.in_chans, self.image_size, self.image_size)
        if tuple(pixel_values.shape[1:]) != expected:
            raise InvalidInput(
                f"pixel_values must be [B, {', '.join(map(str, expected))}], got {list(pixel_values.shape)}"
            )
        patches = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # NCHW -> (B, N, D)
        return FrontEndOutput(patches, None)

    def contextualize(
        self, local: FrontEndOutput, mask: Tensor | None = None, mask_mode: MaskMode = "replace"
    ) -> FrontEndOutput:
        """``mask`` [B, N] over patches. ``replace`` (v1/BEiT): masked patches become the mask token.
        ``remove`` (v2/MAE): positions are added first, then only visible patches are kept."""
        x = local.tokens
        if mask is not None and mask_mode == "replace":
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        if self.position_embedding is not None:  # per-token addition, so adding before the CLS concat is equal
            cls = cls + self.position_embedding[:, :1]
            x = x + self.position_embedding[:, 1:]
        elif self.positions == "sincos":
            x = x + self.sincos.to(x.dtype)
        positions = None
        if mask is not None and mask_mode == "remove":
            kept = visible_indices(mask)
            x = gather_kept(x, kept)
            positions = torch.cat([kept.new_zeros(kept.shape[0], 1), kept + 1], dim=1)
        x = torch.cat([cls, x], dim=1)
        return FrontEndOutput(self.dropout(self.context_norm(x)), None, positions)

    def forward(
        self,
        pixel_values: Tensor,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        mask_mode: MaskMode = "replace",
    ) -> FrontEndOutput:
        return self.contextualize(self.local_features(pixel_values), mask, mask_mode)
