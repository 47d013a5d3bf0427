"""``Data2VecModel``: one modality front end + the shared Transformer. Features only; heads live elsewhere.

Inference and export call ``encode(inputs, padding_mask)``. Pretraining has two more entry points so the
local encoder runs once per batch while the teacher and several masked student copies share its output
(data2vec 2.0 multi-mask; data2vec v1 audio's teacher also reads the student's local features)::

    local = student.local_features(inputs, padding_mask)               # CNN / patch / token embeddings
    with torch.no_grad():
        target_layers = teacher.encode_local(local).layers              # unmasked, eval mode
    clones = repeat_local(local, num_clones)                           # [B*M, T, D]
    student_out = student.encode_local(clones, mask, mask_mode="remove")   # only visible tokens

``mask`` is [B, T] bool (True = masked) over the front end's tokens (frames / patches without CLS / token
positions). ``mask_mode="replace"`` (v1) substitutes the learned mask embedding (audio: after the projection;
image: the patch embeddings before the CLS token; text masks token ids before ``encode`` instead).
``mask_mode="remove"`` (v2, MAE-style) encodes only the visible tokens; every row must mask the same number
of tokens, and ``d2v.models.masking.visible_indices(mask)`` gives the kept order (CLS first for images).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from d2v.models.config import Data2VecConfig
from d2v.models.encoders import FrontEndOutput, MaskMode
from d2v.models.encoders.audio import AudioEncoder, ConvLayer
from d2v.models.encoders.image import ImageEncoder
from d2v.models.encoders.text import TextEncoder
from d2v.models.transformer import LayerOutput, Transformer

__all__ = ["Data2VecModel", "EncoderOutput", "LayerOutput", "repeat_local"]


class EncoderOutput(NamedTuple):
    last_hidden: Tensor  # [B, T, D]
    layers: list[LayerOutput]  # per block: (block output, ffn output), bottom to top
    padding_mask: Tensor  # [B, T] bool, True = padded


def build_front_end(cfg: Data2VecConfig) -> AudioEncoder | ImageEncoder | TextEncoder:
    dim = cfg.transformer.dim
    # Post-LN stacks expect normalised input: fairseq applies the encoder LayerNorm before the first block.
    context_norm = not cfg.transformer.layer_norm_first
    match cfg.modality:
        case "audio":
            a = cfg.audio
            return AudioEncoder(
                dim=dim,
                conv_layers=a.conv_layers,
                extractor_mode=a.extractor_mode,
                conv_bias=a.conv_bias,
                pos_conv_kernel=a.pos_conv_kernel,
                pos_conv_depth=a.pos_conv_depth,
                pos_conv_groups=a.pos_conv_groups,
                pos_conv_zero_padding=a.pos_conv_zero_padding,
                norm_eps=a.norm_eps,
                feature_dropout=a.feature_dropout,
                dropout=a.dropout,
                context_norm=context_norm,
            )
        case "image":
            i = cfg.image
            return ImageEncoder(
                dim=dim,
                image_size=i.image_size,
                patch_size=i.patch_size,
                in_chans=i.in_chans,
                positions=i.positions,
                dropout=i.dropout,
                context_norm=context_norm,
                norm_eps=cfg.transformer.norm_eps,
            )
        case "text":
            t = cfg.text
            return TextEncoder(
                dim=dim,
                vocab_size=t.vocab_size,
                pad_id=t.pad_id,
                max_positions=t.max_positions,
                norm_eps=t.norm_eps,
                dropout=t.dropout,
                context_norm=t.context_norm,
                context_norm_eps=cfg.transformer.norm_eps,
            )
    raise AssertionError(cfg.modality)


class Data2VecModel(nn.Module):
    """Front end (``front_end``) + shared Transformer (``transformer``), built from a ``Data2VecConfig``.

    ``attn_impl`` overrides ``config.transformer.attn_impl`` (the exporter may pick ``math``).
    """

    def __init__(self, config: Data2VecConfig, *, attn_impl: Literal["sdpa", "math"] | None = None) -> None:
        super().__init__()
        self.config = config
        self.front_end = build_front_end(config)
        grid = None
        if config.modality == "image":
            grid = (config.image.grid_size, config.image.grid_size)
        t = config.transformer
        self.transformer = Transformer(
            dim=t.dim,
            depth=t.depth,
            num_heads=t.num_heads,
            ffn_dim=t.ffn_dim,
            layer_norm_first=t.layer_norm_first,
            norm_eps=t.norm_eps,
            dropout=t.dropout,
            attn_dropout=t.attn_dropout,
            activation_dropout=t.activation_dropout,
            layerdrop=t.layerdrop,
            drop_path=t.drop_path,
            layer_scale_init=t.layer_scale_init,
            qkv_bias=t.qkv_bias,
            k_bias=t.k_bias,
            rel_pos_bias=t.rel_pos_bias,
            alibi=t.alibi,
            alibi_per_layer=t.alibi_per_layer,
            final_norm=t.final_norm,
            attn_impl=attn_impl or t.attn_impl,
            init=t.init,
            rel_pos_grid=grid,
        )
        self.init_weights()

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def num_layers(self) -> int:
        return self.config.transformer.depth

    @property
    def dim(self) -> int:
        return self.config.transformer.dim

    @property
    def num_extra_tokens(self) -> int:
        """Tokens the front end prepends (the image CLS); they are dropped from targets and mean pooling."""
        return self.front_end.num_extra_tokens

    def local_features(self, inputs: Tensor, padding_mask: Tensor | None = None) -> FrontEndOutput:
        """The modality-local part: audio projected CNN frames, image patch embeddings (no CLS, no positions),
        text token+position embeddings after LayerNorm and dropout. ``padding_mask`` is input-level (audio:
        per sample); the result carries the token-level mask."""
        return self.front_end.local_features(inputs, padding_mask)

    def encode_local(
        self, local: FrontEndOutput, mask: Tensor | None = None, mask_mode: MaskMode = "replace"
    ) -> EncoderOutput:
        """Contextualize local features (mask, positions, CLS, context norm) and run the Transformer."""
        tokens = self.front_end.contextualize(local, mask, mask_mode)
        out = self.transformer(tokens.tokens, tokens.padding_mask, tokens.positions)
        padding_mask = tokens.padding_mask
        if padding_mask is None:
            padding_mask = torch.zeros(tokens.tokens.shape[:2], dtype=torch.bool, device=tokens.tokens.device)
        return EncoderOutput(out.last_hidden, out.layers, padding_mask)

    def encode(
        self,
        inputs: Tensor,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        mask_mode: MaskMode = "replace",
    ) -> EncoderOutput:
        """inputs: ``input_ids`` [B, T] (text), ``input_values`` [B, S] (audio), ``pixel_values`` [B, C, H, W]
        (image); ``padding_mask`` True = padded, at input level (audio samples are mapped to frames)."""
        return self.encode_local(self.local_features(inputs, padding_mask), mask, mask_mode)

    forward = encode

    @torch.no_grad()
    def init_weights(self) -> None:
        """The one initialisation, as each reference initialises its model:

        * ``bert`` (fairseq ``init_bert_params``): Linear and Embedding weights normal(0.02), zero biases and
          padding rows.
        * ``beit`` (data2vec_vision ``modeling_cyclical.py``): Linear weights, the patch-embedding conv,
          ``cls_token`` and ``mask_token`` truncated normal(0.02) cut at +-1 std (its ``trunc_normal_`` passes
          ``a=-std, b=std``), zero biases, then ``fix_init_weight``: each block's residual output projections
          divided by sqrt(2 * layer_id).
        * both: LayerNorms 1/0, position-bias tables 0, q/k/v biases 0, feature-extractor convs kaiming-normal
          (fairseq ``ConvFeatureExtractionModel``), positional convs PyTorch's default, audio mask embedding
          U[0, 1).
        * the audio projection keeps PyTorch's default: fairseq v1 applies ``init_bert_params`` to the encoder
          only (``post_extract_proj`` lies outside), 2.0 ``reset_parameters()``-es ``project_features`` after it.
        * data2vec 2.0 images (MAE ``PatchEmbed``): xavier-uniform on the flattened patch kernel, PyTorch's
          default bias; the CLS token N(0, 1) (``init_extra_token_zero: false`` -> ``nn.init.normal_``).
        """
        beit = self.config.transformer.init == "beit"
        self.apply(lambda module: _init_module(module, beit))
        for block in self.transformer.blocks:
            for bias in (block.attn.q_bias, block.attn.k_bias, block.attn.v_bias):
                if bias is not None:
                    nn.init.zeros_(bias)
        if beit:
            for layer_id, block in enumerate(self.transformer.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))
        front = self.front_end
        if isinstance(front, AudioEncoder):
            front.projection.reset_parameters()
            nn.init.uniform_(front.mask_embedding)
        if isinstance(front, ImageEncoder):
            for param in (front.mask_token, front.position_embedding):
                if param is not None:
                    _normal(param, beit)
            if self.config.version == 2 and not beit:
                nn.init.normal_(front.cls_token)  # std 1
            else:
                _normal(front.cls_token, beit)


def _normal(tensor: Tensor, beit: bool) -> None:
    """normal(0.02); ``beit``: truncated at +-1 std (data2vec_vision's ``trunc_normal_(a=-std, b=std)``)."""
    if beit:
        nn.init.trunc_normal_(tensor, std=0.02, a=-0.02, b=0.02)
    else:
        nn.init.normal_(tensor, std=0.02)


def _init_module(module: nn.Module, beit: bool) -> None:
    """Per-module part of :meth:`Data2VecModel.init_weights` (applied to every submodule)."""
    if isinstance(module, nn.Linear):
        _normal(module.weight, beit)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        _normal(module.weight, beit)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm | nn.GroupNorm) and module.weight is not None:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):  # the patch embedding
        if beit:
            _normal(module.weight, beit)
            nn.init.zeros_(module.bias)
        else:  # MAE: the bias keeps the constructor's default
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
    elif isinstance(module, ConvLayer):
        nn.init.kaiming_normal_(module.conv.weight)


def repeat_local(local: FrontEndOutput, repeats: int) -> FrontEndOutput:
    """Each sample ``repeats`` times in a row ([B, ...] -> [B * repeats, ...]), for multi-mask students."""

    def rep(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.repeat_interleave(repeats, dim=0)

    return FrontEndOutput(rep(local.tokens), rep(local.padding_mask), rep(local.positions))
