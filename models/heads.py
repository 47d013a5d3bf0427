"""Prediction heads on top of the student (spec §1.4, §5.2): v1 regression heads and v2 convolutional decoders.

Heads are separate from the encoder (never in the teacher, never exported). They map the student's output to
D-dim predictions; the loss reads them only at masked positions.

* v1 audio / vision: ``RegressionHead(dim)`` = ``Linear(D, D)`` (vision: the encoder's final LN comes first).
* v1 text: ``RegressionHead(dim, hidden_dim=2 * dim)`` = ``Linear(D, 2D) -> GELU -> Linear(2D, D)``.
* v2: :class:`Decoder1d` (audio, text) and :class:`Decoder2d` (images) take the kept tokens, fill the masked slots
  with ``N(0, mask_noise_std)`` noise, restore the order with ``ids_restore`` and run
  ``depth x [Conv(k, groups) -> LayerNorm over channels (no affine) -> GELU]`` (+ residual when the channel counts
  match), then a Linear (or 2-layer MLP) back to D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from d2v.core.errors import ConfigError, InvalidInput
from d2v.models.masking import restore

__all__ = [
    "Decoder1d",
    "Decoder2d",
    "DecoderConfig",
    "RegressionHead",
    "RegressionHeadConfig",
    "build_decoder",
    "build_regression_head",
]


# ------------------------------------------------------------------------------------------------ v1


@dataclass
class RegressionHeadConfig:
    """v1 head: ``"linear"`` (audio, vision) or ``"mlp"`` (text, hidden = ``hidden_ratio * D``)."""

    kind: Literal["linear", "mlp"] = "linear"
    hidden_ratio: float = 2.0
    # Linear-layer init: "default" = PyTorch's (fairseq never re-initialises its heads); "bert" = normal(0.02),
    # zero bias (fairseq's init_bert_params, as the encoder). beit recipes always use data2vec_vision's.
    init: Literal["default", "bert"] = "default"


class RegressionHead(nn.Module):
    """v1 regression head.

    Args:
        dim: model dimension D (input and output).
        hidden_dim: None for ``Linear(D, D)``; otherwise ``Linear(D, hidden) -> GELU -> Linear(hidden, D)``.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(dim, dim)
        else:
            self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (..., D) -> (..., D)


def build_regression_head(cfg: RegressionHeadConfig, dim: int) -> RegressionHead:
    return RegressionHead(dim, None if cfg.kind == "linear" else int(dim * cfg.hidden_ratio))


# ------------------------------------------------------------------------------------------------ v2


@dataclass
class DecoderConfig:
    """v2 decoder. Defaults are audio Base; see the ``audio_base`` / ``text_base`` presets (image Base:
    ``objective.head`` of ``training/recipes/base-image-v2.yaml``)."""

    dim: int = 384
    depth: int = 4
    kernel: int = 7
    groups: int = 16
    residual: bool = True
    input_dropout: float = 0.1
    projection: Literal["linear", "mlp"] = "linear"
    projection_ratio: float = 2.0
    mask_noise_std: float = 0.01
    init: Literal["default", "bert"] = "default"  # as RegressionHeadConfig.init

    @classmethod
    def audio_base(cls) -> DecoderConfig:
        return cls(dim=384, depth=4, kernel=7, groups=16, residual=True, input_dropout=0.1)

    @classmethod
    def text_base(cls) -> DecoderConfig:
        return cls(dim=768, depth=5, kernel=9, groups=1, residual=False, input_dropout=0.1, projection="mlp")


def _projection(in_dim: int, out_dim: int, kind: Literal["linear", "mlp"], ratio: float) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    hidden = int(in_dim * ratio)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class _ConvDecoder(nn.Module):
    """Shared part of the v2 decoders: input dropout, noise fill + un-shuffle, conv blocks, projection."""

    def __init__(
        self,
        embed_dim: int,
        decoder_dim: int,
        depth: int,
        kernel: int,
        groups: int,
        residual: bool,
        input_dropout: float,
        projection: Literal["linear", "mlp"],
        projection_ratio: float,
        mask_noise_std: float,
        conv: type[nn.Conv1d] | type[nn.Conv2d],
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"decoder depth must be >= 1, got {depth}")
        if decoder_dim % groups or embed_dim % groups:
            raise ConfigError(f"decoder groups={groups} must divide embed_dim={embed_dim} and dim={decoder_dim}")
        self.kernel = kernel
        self.residual = residual
        self.input_dropout = input_dropout
        self.mask_noise_std = mask_noise_std
        self.convs = nn.ModuleList(
            conv(embed_dim if i == 0 else decoder_dim, decoder_dim, kernel, padding=kernel // 2, groups=groups)
            for i in range(depth)
        )
        self.proj = _projection(decoder_dim, embed_dim, projection, projection_ratio)

    def _block(self, i: int, x: Tensor) -> Tensor:
        """Conv -> LayerNorm over channels (no affine) -> GELU (+ residual). x: (B, C, *S)."""
        y = self.convs[i](x)
        if self.kernel % 2 == 0:  # SamePad: drop the extra trailing step(s) of an even kernel
            y = y[..., :-1] if y.ndim == 3 else y[..., :-1, :-1]
        y = F.gelu(F.layer_norm(y.movedim(1, -1), y.shape[1:2]).movedim(-1, 1))
        return y + x if self.residual and y.shape[1] == x.shape[1] else y

    def _input(
        self, x_kept: Tensor, ids_restore: Tensor | None, noise: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        """(B, K, D) kept tokens -> (B, T, D) full sequence with noise in the masked slots."""
        x = F.dropout(x_kept, self.input_dropout, training=self.training)
        if ids_restore is None:
            return x
        B, K, D = x.shape
        T = ids_restore.shape[1]
        if noise is None:
            if generator is None:
                raise ConfigError("the decoder needs `noise` (B, T-K, D) or a `generator` to fill masked slots")
            noise = torch.randn(B, T - K, D, generator=generator, device=generator.device).to(x.device)
            noise = noise.mul_(self.mask_noise_std)
        elif noise.shape != (B, T - K, D):
            raise InvalidInput(f"noise shape {tuple(noise.shape)} != (B, T-K, D) = {(B, T - K, D)}")
        return restore(x, noise, ids_restore)


class Decoder1d(_ConvDecoder):
    """data2vec 2.0 1-D decoder (audio, text).

    Args:
        embed_dim: encoder dimension D (input and output).
        decoder_dim: conv channels (audio Base 384, text 768).
        depth: number of conv blocks (audio 4, text 5).
        kernel: conv kernel size (audio 7, text 9); padding ``kernel // 2``, even kernels trimmed ("same").
        groups: conv groups (audio 16, text 1).
        residual: add the block input when channel counts match (audio True, text False).
        input_dropout: dropout on the kept tokens before filling (audio/text 0.1).
        projection: ``"linear"`` or ``"mlp"`` (``Linear -> GELU -> Linear``, text) back to D.
        projection_ratio: hidden size of the MLP projection relative to ``decoder_dim``.
        mask_noise_std: std of the Gaussian fill of masked slots (0.01).
    """

    def __init__(
        self,
        embed_dim: int,
        decoder_dim: int = 384,
        depth: int = 4,
        kernel: int = 7,
        groups: int = 16,
        residual: bool = True,
        input_dropout: float = 0.1,
        projection: Literal["linear", "mlp"] = "linear",
        projection_ratio: float = 2.0,
        mask_noise_std: float = 0.01,
    ) -> None:
        super().__init__(
            embed_dim, decoder_dim, depth, kernel, groups, residual, input_dropout, projection, projection_ratio,
            mask_noise_std, nn.Conv1d,
        )  # fmt: skip

    def forward(
        self,
        x_kept: Tensor,
        ids_restore: Tensor | None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Predict every position.

        Args:
            x_kept: (B, K, D) student output at the kept positions (extra tokens removed), in ``ids_keep`` order.
            ids_restore: (B, T) from :func:`d2v.models.masking.make_mask_info`; None if nothing was dropped.
            noise: (B, T - K, D) fill for the masked slots; drawn as ``N(0, mask_noise_std)`` from ``generator``
                when None.
            generator: source of the noise.

        Returns:
            (B, T, D) predictions; read them at the masked positions.
        """
        x = self._input(x_kept, ids_restore, noise, generator).transpose(1, 2)  # (B, T, D) -> (B, D, T)
        for i in range(len(self.convs)):
            x = self._block(i, x)  # (B, C, T)
        return self.proj(x.transpose(1, 2))  # (B, T, C) -> (B, T, D)


class Decoder2d(_ConvDecoder):
    """data2vec 2.0 2-D decoder (images): tokens are reshaped to the patch grid for 2-D convolutions.

    Args:
        embed_dim: encoder dimension D.
        grid: ``(H, W)`` patch grid (14 x 14 for 224 / 16).
        decoder_dim: conv channels (Base 768).
        depth: number of conv blocks (Base 6).
        kernel: conv kernel size (Base 3).
        groups: conv groups (16).
        residual: add the block input when channel counts match.
        input_dropout: dropout on the kept tokens (images 0).
        projection: ``"linear"`` or ``"mlp"``.
        projection_ratio: MLP hidden ratio.
        mask_noise_std: std of the Gaussian fill (0.01).
    """

    def __init__(
        self,
        embed_dim: int,
        grid: tuple[int, int] = (14, 14),
        decoder_dim: int = 768,
        depth: int = 6,
        kernel: int = 3,
        groups: int = 16,
        residual: bool = True,
        input_dropout: float = 0.0,
        projection: Literal["linear", "mlp"] = "linear",
        projection_ratio: float = 2.0,
        mask_noise_std: float = 0.01,
    ) -> None:
        super().__init__(
            embed_dim, decoder_dim, depth, kernel, groups, residual, input_dropout, projection, projection_ratio,
            mask_noise_std, nn.Conv2d,
        )  # fmt: skip
        self.grid = grid

    def forward(
        self,
        x_kept: Tensor,
        ids_restore: Tensor | None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Same contract as :meth:`Decoder1d.forward`; T must equal ``H * W``."""
        x = self._input(x_kept, ids_restore, noise, generator)  # (B, T, D)
        B, T, D = x.shape
        H, W = self.grid
        if T != H * W:
            raise InvalidInput(f"Decoder2d expects T = {H}*{W} = {H * W} tokens, got {T}")
        x = x.transpose(1, 2).reshape(B, D, H, W)  # (B, T, D) -> (B, D, H, W)
        for i in range(len(self.convs)):
            x = self._block(i, x)  # (B, C, H, W)
        return self.proj(x.flatten(2).transpose(1, 2))  # (B, H*W, C) -> (B, T, D)


def build_decoder(cfg: DecoderConfig, embed_dim: int, grid: tuple[int, int] | None = None) -> Decoder1d | Decoder2d:
    """``Decoder2d`` when a ``grid`` is given (images), else ``Decoder1d``."""
    common = dict(
        decoder_dim=cfg.dim,
        depth=cfg.depth,
        kernel=cfg.kernel,
        groups=cfg.groups,
        residual=cfg.residual,
        input_dropout=cfg.input_dropout,
        projection=cfg.projection,
        projection_ratio=cfg.projection_ratio,
        mask_noise_std=cfg.mask_noise_std,
    )
    if grid is not None:
        return Decoder2d(embed_dim, grid, **common)
    return Decoder1d(embed_dim, **common)
