"""Audio front end: 16 kHz waveform [B, S] -> frames [B, T, D] at 50 Hz (wav2vec 2.0 / data2vec layout)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from d2v.models.encoders import FrontEndOutput, MaskMode
from d2v.models.masking import gather_kept, visible_indices


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (fairseq ``Fp32LayerNorm``): CNN activations overflow fp16 statistics."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class ConvLayer(nn.Module):
    """Conv1d -> norm -> GELU. ``norm``: LayerNorm over channels (data2vec), GroupNorm with one group per
    channel (wav2vec 2.0 "default" mode, first layer only; normalises over time, so padding leaks in) or none."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, *, bias: bool, norm: Literal["layer", "group", "none"]
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        if norm == "layer":
            self.norm = Fp32LayerNorm(out_ch)
        elif norm == "group":
            self.norm = nn.GroupNorm(out_ch, out_ch)
        else:
            self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_kind == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # normalise channels: (B, C, T) <-> (B, T, C)
        elif self.norm_kind == "group":
            x = self.norm(x.float()).type_as(x)
        return F.gelu(x)


class ConvPositionalEncoder(nn.Module):
    """data2vec's relative positional encoder: ``depth`` x [Conv1d(k, groups, same padding) -> LayerNorm
    without affine -> GELU]. Returns the positional term only; the caller adds it to its input.

    ``zero_padding``: re-zero padded frames after every layer. fairseq and HF only zero them before the first
    layer, so from the second layer on, real frames near the end see non-zero "padding" and a padded row differs
    from the same audio run alone (HF documents this). Off by default for parity with both.
    """

    def __init__(self, dim: int, kernel: int, depth: int, groups: int, *, zero_padding: bool = False) -> None:
        super().__init__()
        self.kernel = kernel
        self.zero_padding = zero_padding
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups) for _ in range(depth)
        )

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = x.transpose(1, 2)  # (B, T, D) -> (B, D, T)
        for conv in self.convs:
            x = conv(x)
            if self.kernel % 2 == 0:  # an even kernel with padding k//2 yields one extra frame
                x = x[:, :, :-1]
            x = F.gelu(F.layer_norm(x.transpose(1, 2), (x.shape[1],)).transpose(1, 2))  # LN over channels
            if self.zero_padding and padding_mask is not None:
                x = x.masked_fill(padding_mask.unsqueeze(1), 0.0)
        return x.transpose(1, 2)


class AudioEncoder(nn.Module):
    """Conv feature extractor -> LayerNorm + Linear (local features) -> [mask] -> x + pos_conv(x) ->
    context LayerNorm (post-LN recipes) -> dropout.

    Args:
        dim: Transformer width.
        conv_layers: (channels, kernel, stride) per conv layer.
        extractor_mode: ``layer_norm`` (data2vec) or ``group_norm`` (wav2vec 2.0 base).
        conv_bias: biases in the feature-extractor convs.
        pos_conv_kernel, pos_conv_depth, pos_conv_groups, pos_conv_zero_padding: the positional encoder.
        norm_eps: epsilon of the projection and context LayerNorms.
        feature_dropout: dropout on the projected features (student side only).
        dropout: dropout after the context norm.
        context_norm: LayerNorm after the positional encoder (present when the blocks are post-LN).
    """

    num_extra_tokens = 0

    def __init__(
        self,
        *,
        dim: int,
        conv_layers: tuple[tuple[int, int, int], ...],
        extractor_mode: Literal["layer_norm", "group_norm"] = "layer_norm",
        conv_bias: bool = False,
        pos_conv_kernel: int = 19,
        pos_conv_depth: int = 5,
        pos_conv_groups: int = 16,
        pos_conv_zero_padding: bool = False,
        norm_eps: float = 1e-5,
        feature_dropout: float = 0.0,
        dropout: float = 0.0,
        context_norm: bool = True,
    ) -> None:
        super().__init__()
        self.conv_layers = [(k, s) for _, k, s in conv_layers]
        layers, in_ch = [], 1
        for i, (out_ch, kernel, stride) in enumerate(conv_layers):
            norm = "layer" if extractor_mode == "layer_norm" else ("group" if i == 0 else "none")
            layers.append(ConvLayer(in_ch, out_ch, kernel, stride, bias=conv_bias, norm=norm))
            in_ch = out_ch
        self.feature_extractor = nn.Sequential(*layers)
        self.projection_norm = nn.LayerNorm(in_ch, eps=norm_eps)
        self.projection = nn.Linear(in_ch, dim)
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())  # fairseq mask_emb: U[0, 1)
        self.feature_dropout = nn.Dropout(feature_dropout)
        self.pos_conv = ConvPositionalEncoder(
            dim, pos_conv_kernel, pos_conv_depth, pos_conv_groups, zero_padding=pos_conv_zero_padding
        )
        self.context_norm = nn.LayerNorm(dim, eps=norm_eps) if context_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def num_frames(self, num_samples: Tensor) -> Tensor:
        """Frames whose receptive field lies inside ``num_samples`` (HF ``_get_feat_extract_output_lengths``)."""
        for kernel, stride in self.conv_layers:
            num_samples = torch.div(num_samples - kernel, stride, rounding_mode="floor") + 1
        return num_samples

    def local_features(self, input_values: Tensor, padding_mask: Tensor | None = None) -> FrontEndOutput:
        """input_values [B, S] (right-padded), padding_mask [B, S] True = padded sample -> projected frames
        [B, T, D] and the frame padding mask. Real frames never see padded samples, so padding values are
        irrelevant (layer_norm mode)."""
        features = self.feature_extractor(input_values.unsqueeze(1)).transpose(1, 2)  # (B, C, T) -> (B, T, C)
        frame_padding = None
        if padding_mask is not None:
            lengths = self.num_frames((~padding_mask).sum(dim=1))
            frame_padding = torch.arange(features.shape[1], device=features.device)[None, :] >= lengths[:, None]
        return FrontEndOutput(self.projection(self.projection_norm(features)), frame_padding)

    def contextualize(
        self, local: FrontEndOutput, mask: Tensor | None = None, mask_mode: MaskMode = "replace"
    ) -> FrontEndOutput:
        """``replace`` (v1): masked frames become the learned mask embedding. ``remove`` (v2): masked frames are
        zeroed, the positional conv runs on the full sequence, then only visible frames are kept."""
        x, padding_mask = self.feature_dropout(local.tokens), local.padding_mask
        if mask is not None:
            fill = self.mask_embedding.to(x.dtype) if mask_mode == "replace" else x.new_zeros(())
            x = torch.where(mask.unsqueeze(-1), fill, x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # padded frames must not leak through the conv
        x = x + self.pos_conv(x, padding_mask)
        positions = None
        if mask is not None and mask_mode == "remove":
            positions = visible_indices(mask)
            x = gather_kept(x, positions)
            padding_mask = gather_kept(padding_mask, positions) if padding_mask is not None else None
        return FrontEndOutput(self.dropout(self.context_norm(x)), padding_mask, positions)

    def forward(
        self,
        input_values: Tensor,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        mask_mode: MaskMode = "replace",
    ) -> FrontEndOutput:
        return self.contextualize(self.local_features(input_values, padding_mask), mask, mask_mode)
