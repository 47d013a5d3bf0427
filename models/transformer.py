"""The one Transformer stack shared by every modality, the student, the teacher and the export.

``Transformer.forward(x, padding_mask, positions) -> TransformerOutput(last_hidden, layers)`` always returns
both data2vec target tensors of every block in one pass: ``ffn`` (the fc2 output before dropout, residual and
the post-LN ``norm2``; v1 audio/text and v2 targets) and ``block`` (the block output; v1 vision targets and
embedding extraction). Attention runs on ``F.scaled_dot_product_attention`` with the key padding mask and
the additive position biases (BEiT shared relative bias, ALiBi) folded into one float mask. Eval-mode
control flow never depends on tensor values, so the module exports with ``torch.onnx``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerOutput(NamedTuple):
    block: Tensor  # [B, T, D] block output
    ffn: Tensor  # [B, T, D] fc2 output before dropout / residual / norm2


class TransformerOutput(NamedTuple):
    last_hidden: Tensor  # [B, T, D] last block output, after the final norm when the recipe has one
    layers: list[LayerOutput]  # one per block, bottom to top


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    Args:
        dim: model width.
        num_heads: attention heads (``dim`` must divide).
        qkv_bias: biases on q and v (and k unless ``k_bias`` is False).
        k_bias: BEiT has no key bias; it is redundant (it shifts every logit of a query equally).
        attn_dropout: dropout on the attention probabilities (training only).
        attn_impl: ``sdpa`` (fused kernels) or ``math`` (explicit softmax; a reference and export fallback).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        k_bias: bool = True,
        attn_dropout: float = 0.0,
        attn_impl: Literal["sdpa", "math"] = "sdpa",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.k_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias and k_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """``attn_mask``: additive float [B or 1, H or 1, T, T] or None."""
        B, T, D = x.shape
        bias = None
        if self.q_bias is not None:
            k_bias = self.k_bias if self.k_bias is not None else torch.zeros_like(self.q_bias)
            bias = torch.cat([self.q_bias, k_bias, self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        # (B, T, 3D) -> (3, B, H, T, head_dim)
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        dropout_p = self.attn_dropout if self.training else 0.0
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
            # Fused kernels may return a (B, T, H, hd)-strided tensor that torch.export records as viewable but
            # its math decomposition does not produce; an explicit copy keeps the reshape below valid (ONNX).
            out = out.clone(memory_format=torch.contiguous_format)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            if attn_mask is not None:
                scores = scores + attn_mask
            probs = F.dropout(scores.float().softmax(dim=-1).to(q.dtype), dropout_p, self.training)
            out = probs @ v
        # (B, H, T, head_dim) -> (B, T, D)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 (no output dropout: the block applies it so fc2 can be a target)."""

    def __init__(self, dim: int, ffn_dim: int, *, activation_dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.act_drop = nn.Dropout(activation_dropout)
        self.fc2 = nn.Linear(ffn_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act_drop(F.gelu(self.fc1(x))))


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT/BEiT ``gamma``, HF ``lambda``)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples during training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """One Transformer block, pre-LN or post-LN.

    Post-LN (fairseq wav2vec2/RoBERTa, data2vec 2.0 ``AltBlock``, HF data2vec audio/text)::

        x = norm1(x + drop(attn(x)));  f = fc2(act(fc1(x)));  x = norm2(x + drop(f))

    Pre-LN (BEiT / data2vec v1 vision)::

        x = x + drop(attn(norm1(x)));  f = fc2(act(fc1(norm2(x))));  x = x + drop(f)

    ``drop`` = dropout, optional layer-scale, drop-path. Returns ``(block_output, f)``.

    Args:
        dim, num_heads, ffn_dim: widths.
        layer_norm_first: pre-LN when True.
        norm_eps: LayerNorm epsilon.
        dropout: on both residual branches.
        attn_dropout, activation_dropout: inside attention / the FFN.
        drop_path: stochastic-depth rate of this block.
        layer_scale_init: initial LayerScale value; None disables it.
        qkv_bias, k_bias, attn_impl: see ``Attention``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        *,
        layer_norm_first: bool = False,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        qkv_bias: bool = True,
        k_bias: bool = True,
        attn_impl: Literal["sdpa", "math"] = "sdpa",
    ) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, k_bias=k_bias, attn_dropout=attn_dropout, attn_impl=attn_impl
        )
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = FeedForward(dim, ffn_dim, activation_dropout=activation_dropout)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _residual(self, branch: Tensor, ls: nn.Module) -> Tensor:
        return self.drop_path(ls(self.dropout(branch)))

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.layer_norm_first:
            x = x + self._residual(self.attn(self.norm1(x), attn_mask), self.ls1)
            ffn = self.mlp(self.norm2(x))
            return x + self._residual(ffn, self.ls2), ffn
        x = self.norm1(x + self._residual(self.attn(x, attn_mask), self.ls1))
        ffn = self.mlp(x)
        return self.norm2(x + self._residual(ffn, self.ls2)), ffn


class SharedRelativePositionBias(nn.Module):
    """BEiT's relative position bias shared by all layers: a learned table over 2-D patch offsets plus three
    entries for CLS->patch, patch->CLS and CLS->CLS. Sequence layout: CLS first, then the row-major grid."""

    def __init__(self, grid_size: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        h, w = grid_size
        num_distances = (2 * h - 1) * (2 * w - 1) + 3
        self.table = nn.Parameter(torch.zeros(num_distances, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)  # (2, N)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
        rel[:, :, 0] += h - 1
        rel[:, :, 1] += w - 1
        index = torch.zeros((h * w + 1, h * w + 1), dtype=torch.long)
        index[1:, 1:] = rel[:, :, 0] * (2 * w - 1) + rel[:, :, 1]
        index[0, :] = num_distances - 3
        index[:, 0] = num_distances - 2
        index[0, 0] = num_distances - 1
        self.register_buffer("index", index, persistent=False)

    def forward(self) -> Tensor:
        n = self.index.shape[0]
        # (N+1)^2 lookups -> (1, H, N+1, N+1)
        return self.table[self.index.reshape(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)


def alibi_slopes(num_heads: int) -> list[float]:
    """The standard ALiBi head slopes (geometric; interleaved for non-powers of two)."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


class ALiBi(nn.Module):
    """Symmetric 1-D ALiBi of data2vec 2.0 audio: bias ``-|i - j| * slope_h * scale_h``, with a learned
    per-head scale (init 1, clamped at 0). ``positions`` are the original time indices, so the bias stays
    right when masked tokens were removed. ``num_layers`` > 0 gives every block its own scales (fairseq
    ``learned_alibi_scale_per_layer``): ``scale`` is then [num_layers, H] and ``forward`` takes the block."""

    def __init__(self, num_heads: int, num_layers: int = 0) -> None:
        super().__init__()
        self.register_buffer("slopes", torch.tensor(alibi_slopes(num_heads)), persistent=False)
        shape = (num_layers, num_heads) if num_layers else (num_heads,)
        self.scale = nn.Parameter(torch.ones(shape))

    @property
    def per_layer(self) -> bool:
        return self.scale.ndim == 2

    def forward(self, positions: Tensor, layer: int = 0) -> Tensor:
        """positions [B, T] -> bias [B, H, T, T] (of block ``layer`` when the scales are per layer)."""
        distance = (positions[:, None, :, None] - positions[:, None, None, :]).abs().to(self.scale.dtype)
        scale = self.scale[layer] if self.per_layer else self.scale
        slopes = (self.slopes * scale.clamp_min(0.0)).view(1, -1, 1, 1)
        return -distance * slopes


class Transformer(nn.Module):
    """The shared stack: ``depth`` blocks, optional position biases, optional final LayerNorm.

    Keyword arguments mirror ``TransformerConfig`` fields (``Data2VecModel(config)`` passes them);
    ``rel_pos_grid`` is the patch grid for ``rel_pos_bias="shared"``. ``layerdrop`` skips whole blocks in
    training only; a skipped block reports its input as ``block`` and zeros as ``ffn`` so ``layers`` always
    has ``depth`` entries.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        ffn_dim: int,
        layer_norm_first: bool = False,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        layerdrop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        qkv_bias: bool = True,
        k_bias: bool = True,
        rel_pos_bias: Literal["none", "shared"] = "none",
        alibi: bool = False,
        alibi_per_layer: bool = False,
        final_norm: bool = False,
        attn_impl: Literal["sdpa", "math"] = "sdpa",
        init: Literal["bert", "beit"] = "bert",
        rel_pos_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.layerdrop = layerdrop
        self.init_scheme = init
        # Stochastic-depth decay rule (BEiT): linear from 0 to ``drop_path`` (plain floats: meta-device safe).
        drop_path_rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                dim,
                num_heads,
                ffn_dim,
                layer_norm_first=layer_norm_first,
                norm_eps=norm_eps,
                dropout=dropout,
                attn_dropout=attn_dropout,
                activation_dropout=activation_dropout,
                drop_path=rate,
                layer_scale_init=layer_scale_init,
                qkv_bias=qkv_bias,
                k_bias=k_bias,
                attn_impl=attn_impl,
            )
            for rate in drop_path_rates
        )
        if rel_pos_bias == "shared":
            if rel_pos_grid is None:
                raise ValueError("rel_pos_bias='shared' needs rel_pos_grid")
            self.rel_pos_bias = SharedRelativePositionBias(rel_pos_grid, num_heads)
        else:
            self.rel_pos_bias = None
        self.alibi = ALiBi(num_heads, depth if alibi_per_layer else 0) if alibi else None
        self.final_norm = nn.LayerNorm(dim, eps=norm_eps) if final_norm else nn.Identity()

    def attention_mask(
        self, x: Tensor, padding_mask: Tensor | None, positions: Tensor | None, layer: int = 0
    ) -> Tensor | None:
        """Additive float mask [B or 1, H or 1, T, T] of block ``layer``: position biases plus a large negative
        value on padded keys (finite, so a fully padded row gives a uniform softmax instead of NaN)."""
        mask = None
        if self.rel_pos_bias is not None:
            mask = self.rel_pos_bias().to(x.dtype)
        if self.alibi is not None:
            if positions is None:
                positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
            bias = self.alibi(positions, layer).to(x.dtype)
            mask = bias if mask is None else mask + bias
        if padding_mask is not None:
            pad = torch.zeros(padding_mask.shape, dtype=x.dtype, device=x.device)
            pad = pad.masked_fill(padding_mask, torch.finfo(x.dtype).min)[:, None, None, :]
            mask = pad if mask is None else mask + pad
        return mask

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, positions: Tensor | None = None
    ) -> TransformerOutput:
        """x [B, T, D]; padding_mask [B, T] bool, True = padded key; positions [B, T] original time indices
        (ALiBi only; default 0..T-1)."""
        attn_mask = self.attention_mask(x, padding_mask, positions)
        per_layer = self.alibi is not None and self.alibi.per_layer
        layers: list[LayerOutput] = []
        for i, block in enumerate(self.blocks):
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                layers.append(LayerOutput(x, torch.zeros_like(x)))
                continue
            if per_layer and i:
                attn_mask = self.attention_mask(x, padding_mask, positions, i)
            x, ffn = block(x, attn_mask)
            layers.append(LayerOutput(x, ffn))
        return TransformerOutput(self.final_norm(x), layers)
