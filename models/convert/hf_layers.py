"""Hugging Face ``Data2VecAudio/Text/VisionModel`` config + weights -> our ``Data2VecConfig`` + state dict.

Spec §7 pitfalls handled here: ``num_conv_pos_embeddings`` is the number of pos-conv layers for data2vec
audio (not the kernel), the vision ``layer_norm_eps`` comes from config.json, vision uses one shared
relative-position table, text positions carry fairseq's padding offset, and HF text's single token-type row is
folded into the position table. Every mapper reads the base model's tensors through :class:`HFWeights`, which
records what it read, so the caller can say what it did not (heads, poolers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from d2v.core.errors import ConfigError
from d2v.models.config import (
    AudioEncoderConfig,
    Data2VecConfig,
    ImageEncoderConfig,
    TargetConfig,
    TextEncoderConfig,
    TransformerConfig,
)

Mapped = tuple[Data2VecConfig, dict[str, Tensor]]


class HFWeights:
    """The base model's HF tensors by name (task prefix removed), with a clear error for a missing one; the
    names read are kept in ``used``."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        self.state = state
        self.used: set[str] = set()

    def __call__(self, name: str) -> Tensor:
        if name not in self.state:
            raise ConfigError(f"Hugging Face weights lack {name!r}")
        self.used.add(name)
        return self.state[name]

    def get(self, name: str) -> Tensor | None:
        return self(name) if name in self.state else None

    def pair(self, name: str) -> tuple[Tensor, Tensor]:
        """``(name.weight, name.bias)``."""
        return self(name + ".weight"), self(name + ".bias")


def map_hf_model(modality: str, hf: dict[str, Any], w: HFWeights) -> Mapped:
    """``config.json`` (as a dict) and the base model's weights -> our config and state dict."""
    return {"audio": _audio, "text": _text, "image": _image}[modality](hf, w)


def _block(
    dst: dict[str, Tensor],
    i: int,
    q: tuple,
    k: tuple,
    v: tuple,
    out: tuple,
    fc1: tuple,
    fc2: tuple,
    norm1: tuple,
    norm2: tuple,
) -> None:
    """One Transformer block from separate (weight, bias) pairs; a None key bias stays absent (BEiT)."""
    p = f"transformer.blocks.{i}."
    dst[p + "attn.qkv.weight"] = torch.cat([q[0], k[0], v[0]])
    dst[p + "attn.q_bias"], dst[p + "attn.v_bias"] = q[1], v[1]
    if k[1] is not None:
        dst[p + "attn.k_bias"] = k[1]
    for name, (weight, bias) in {
        "attn.proj": out,
        "mlp.fc1": fc1,
        "mlp.fc2": fc2,
        "norm1": norm1,
        "norm2": norm2,
    }.items():
        dst[p + name + ".weight"], dst[p + name + ".bias"] = weight, bias


def _transformer(hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
    return TransformerConfig(
        dim=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        ffn_dim=hf["intermediate_size"],
        norm_eps=hf["layer_norm_eps"],
        **overrides,
    )


def _audio(hf: dict[str, Any], w: HFWeights) -> Mapped:
    if hf.get("add_adapter"):
        raise ConfigError("Data2VecAudio models with an adapter are not supported")
    depth = hf["num_conv_pos_embeddings"]  # data2vec audio: the NUMBER of pos-conv layers (wav2vec2: the kernel)
    transformer = _transformer(
        hf,
        dropout=hf["hidden_dropout"],
        attn_dropout=hf["attention_dropout"],
        activation_dropout=hf["activation_dropout"],
        layerdrop=hf["layerdrop"],
    )
    audio = AudioEncoderConfig(
        conv_layers=tuple(zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"], strict=True)),
        conv_bias=hf["conv_bias"],
        pos_conv_width=hf["conv_pos_kernel_size"] * depth,  # our kernel = width // depth
        pos_conv_depth=depth,
        pos_conv_groups=hf["num_conv_pos_embedding_groups"],
        norm_eps=hf["layer_norm_eps"],
        feature_dropout=hf["feat_proj_dropout"],
        dropout=hf["hidden_dropout"],
    )
    config = Data2VecConfig("audio", 1, transformer, audio=audio, targets=TargetConfig(min(8, transformer.depth)))
    if audio.pos_conv_kernel != hf["conv_pos_kernel_size"]:
        raise ConfigError(f"unsupported conv_pos_kernel_size {hf['conv_pos_kernel_size']}")

    dst: dict[str, Tensor] = {}
    for i in range(len(audio.conv_layers)):
        src_p, dst_p = f"feature_extractor.conv_layers.{i}.", f"front_end.feature_extractor.{i}."
        dst[dst_p + "conv.weight"] = w(src_p + "conv.weight")
        if audio.conv_bias:
            dst[dst_p + "conv.bias"] = w(src_p + "conv.bias")
        dst[dst_p + "norm.weight"], dst[dst_p + "norm.bias"] = w.pair(src_p + "layer_norm")
    for ours, theirs in {
        "projection_norm": "feature_projection.layer_norm",
        "projection": "feature_projection.projection",
        "context_norm": "encoder.layer_norm",
    }.items():
        dst[f"front_end.{ours}.weight"], dst[f"front_end.{ours}.bias"] = w.pair(theirs)
    for i in range(depth):
        for kind in ("weight", "bias"):
            dst[f"front_end.pos_conv.convs.{i}.{kind}"] = w(f"encoder.pos_conv_embed.layers.{i}.conv.{kind}")
    if (mask_embedding := w.get("masked_spec_embed")) is not None:
        dst["front_end.mask_embedding"] = mask_embedding

    for i in range(transformer.depth):
        p = f"encoder.layers.{i}."
        _block(
            dst,
            i,
            w.pair(p + "attention.q_proj"),
            w.pair(p + "attention.k_proj"),
            w.pair(p + "attention.v_proj"),
            w.pair(p + "attention.out_proj"),
            w.pair(p + "feed_forward.intermediate_dense"),
            w.pair(p + "feed_forward.output_dense"),
            w.pair(p + "layer_norm"),
            w.pair(p + "final_layer_norm"),
        )
    return config, dst


def _text(hf: dict[str, Any], w: HFWeights) -> Mapped:
    transformer = _transformer(hf, dropout=hf["hidden_dropout_prob"], attn_dropout=hf["attention_probs_dropout_prob"])
    text = TextEncoderConfig(
        vocab_size=hf["vocab_size"],
        pad_id=1 if hf.get("pad_token_id") is None else hf["pad_token_id"],
        max_positions=hf["max_position_embeddings"],
        norm_eps=hf["layer_norm_eps"],
        dropout=hf["hidden_dropout_prob"],
    )
    config = Data2VecConfig(
        "text", 1, transformer, text=text, targets=TargetConfig(min(10, transformer.depth), "layer")
    )
    dst: dict[str, Tensor] = {
        "front_end.token_embedding.weight": w("embeddings.word_embeddings.weight"),
        # HF adds token_type_embeddings[0] to every token (type ids default to 0): fold it into the positions.
        "front_end.position_embedding.weight": w("embeddings.position_embeddings.weight")
        + w("embeddings.token_type_embeddings.weight")[0],
        "front_end.norm.weight": w("embeddings.LayerNorm.weight"),
        "front_end.norm.bias": w("embeddings.LayerNorm.bias"),
    }

    for i in range(transformer.depth):
        p = f"encoder.layer.{i}."
        _block(
            dst,
            i,
            w.pair(p + "attention.self.query"),
            w.pair(p + "attention.self.key"),
            w.pair(p + "attention.self.value"),
            w.pair(p + "attention.output.dense"),
            w.pair(p + "intermediate.dense"),
            w.pair(p + "output.dense"),
            w.pair(p + "attention.output.LayerNorm"),
            w.pair(p + "output.LayerNorm"),
        )
    return config, dst


def _image(hf: dict[str, Any], w: HFWeights) -> Mapped:
    if hf.get("use_relative_position_bias"):
        raise ConfigError(
            "per-layer relative position bias (use_relative_position_bias, the fine-tuned BEiT layout) is not "
            "supported; only use_shared_relative_position_bias (the pretrained data2vec-vision layout)"
        )
    image_size, patch_size = square(hf.get("image_size", 224)), square(hf.get("patch_size", 16))
    shared_bias = bool(hf.get("use_shared_relative_position_bias"))
    layer_scale = hf.get("layer_scale_init_value", 0.1)
    transformer = _transformer(
        hf,
        layer_norm_first=True,
        dropout=hf.get("hidden_dropout_prob", 0.0),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        drop_path=hf.get("drop_path_rate", 0.0),
        layer_scale_init=layer_scale if layer_scale > 0 else None,
        k_bias=False,
        rel_pos_bias="shared" if shared_bias else "none",
        final_norm=not hf.get("use_mean_pooling", True),  # pretrained layout: LayerNorm on all tokens
        init="beit",
    )
    image = ImageEncoderConfig(
        image_size=image_size,
        patch_size=patch_size,
        in_chans=hf.get("num_channels", 3),
        positions="learned" if hf.get("use_absolute_position_embeddings") else "none",
        dropout=hf.get("hidden_dropout_prob", 0.0),
    )
    targets = TargetConfig(min(6, transformer.depth), "layer", "layer", "block")
    config = Data2VecConfig("image", 1, transformer, image=image, targets=targets)
    dst: dict[str, Tensor] = {
        "front_end.cls_token": w("embeddings.cls_token"),
        "front_end.patch_embed.weight": w("embeddings.patch_embeddings.projection.weight"),
        "front_end.patch_embed.bias": w("embeddings.patch_embeddings.projection.bias"),
    }
    if (mask_token := w.get("embeddings.mask_token")) is not None:
        dst["front_end.mask_token"] = mask_token
    if image.positions == "learned":
        dst["front_end.position_embedding"] = w("embeddings.position_embeddings")
    if shared_bias:
        dst["transformer.rel_pos_bias.table"] = w("encoder.relative_position_bias.relative_position_bias_table")
    if transformer.final_norm:
        dst["transformer.final_norm.weight"], dst["transformer.final_norm.bias"] = w.pair("layernorm")

    for i in range(transformer.depth):
        p = f"encoder.layer.{i}."
        _block(
            dst,
            i,
            w.pair(p + "attention.attention.query"),
            (w(p + "attention.attention.key.weight"), None),
            w.pair(p + "attention.attention.value"),
            w.pair(p + "attention.output.dense"),
            w.pair(p + "intermediate.dense"),
            w.pair(p + "output.dense"),
            w.pair(p + "layernorm_before"),
            w.pair(p + "layernorm_after"),
        )
        if transformer.layer_scale_init is not None:
            dst[f"transformer.blocks.{i}.ls1.gamma"] = w(p + "lambda_1")
            dst[f"transformer.blocks.{i}.ls2.gamma"] = w(p + "lambda_2")
    return config, dst


def square(value: Any) -> int:
    """An HF image/patch size (int or ``[h, w]``) as one side; non-square sizes are refused."""
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ConfigError(f"only square images/patches are supported, got {value}")
        value = value[0]
    return int(value)
