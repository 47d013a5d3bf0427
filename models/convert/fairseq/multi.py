"""data2vec 2.0 (fairseq ``Data2VecMultiModel``, model ``data2vec_multi``) -> project checkpoint.

Layout (``examples/data2vec/models/data2vec2.py`` and ``modalities/*``): ``modality_encoders.<MOD>``
(``local_encoder`` -> ``project_features`` -> fixed / relative positions -> extra tokens -> ``context_encoder``:
LayerNorm, dropout, ``prenet_depth`` blocks) -> the shared ``blocks`` (post-LN ``AltBlock``, fused qkv). The
project runs the prenet blocks as the first blocks of its one stack (``prenet_depth``), so top-K selection from
the top is the same. ALiBi (audio; text when enabled) adds ``-|i-j| * slope_h * clamp(scale, 0)`` in every
block, prenet and shared. The EMA teacher is ``blocks`` only (``ema_encoder_only``, text recipes) or the
whole model without decoders (and without the local encoder unless ``ema_local_encoder``); the parts it lacks
are the student's, as in fairseq's teacher forward. ``decoder`` / ``shared_decoder`` / ``recon_proj`` are
pretraining-only and dropped.

Refused, because the project's architecture has no equivalent: pre-LN blocks (``layer_norm_first``; fairseq's
pre-LN ``AltBlock`` also drops the MLP residual), learned ALiBi tables, 2-D (image) ALiBi, a LayerNorm before
the audio positional conv, extra tokens other than the image CLS, and an image patch width that differs from
the model width. None of the released data2vec 2.0 recipes uses any of them.
"""

from __future__ import annotations

from typing import Any

import torch

from d2v.core.errors import ConfigError
from d2v.models.config import (
    AudioEncoderConfig,
    Data2VecConfig,
    EmbeddingConfig,
    ImageEncoderConfig,
    TextEncoderConfig,
    TransformerConfig,
)
from d2v.models.encoders.image import sincos_positions_2d
from d2v.models.preprocessing.config import (
    AudioPreprocessingConfig,
    ImagePreprocessingConfig,
    TextPreprocessingConfig,
)

from .common import (
    Converted,
    FairseqCheckpoint,
    Weights,
    extractor_mode,
    parse_conv_spec,
    put_block,
    put_feature_extractor,
    put_pair,
    require,
    target_config,
)

MODALITIES = {"AUDIO": "audio", "IMAGE": "image", "TEXT": "text"}
_FAIRSEQ_ENUM = {1: "AUDIO", 2: "IMAGE", 3: "TEXT"}  # examples.data2vec.data.modality.Modality (auto())


def modality_of(ckpt: FairseqCheckpoint, where: str) -> str:
    """The one modality the checkpoint has an encoder for (``modality_encoders.<MOD>.``)."""
    found = sorted({k.split(".")[1] for k in ckpt.state if k.startswith("modality_encoders.")})
    if len(found) != 1:
        wanted = ckpt.model_cfg.get("supported_modality")
        wanted = _FAIRSEQ_ENUM.get(wanted, wanted)
        if wanted in found:
            return wanted
        raise ConfigError(f"{where}: expected one modality encoder, found {found or 'none'}")
    if found[0] not in MODALITIES:
        raise ConfigError(f"{where}: unknown modality {found[0]!r}")
    return found[0]


def ema_prefix(cfg: dict[str, Any]) -> str:
    return "blocks." if cfg.get("ema_encoder_only", True) else ""


def convert(ckpt: FairseqCheckpoint, state: dict, where: str, mod: str) -> Converted:
    cfg = ckpt.model_cfg
    mcfg = (cfg.get("modalities") or {}).get(mod.lower()) or {}
    require(cfg, "layer_norm_first", False, where, "fairseq's pre-LN AltBlock also drops the MLP residual")
    w = Weights(state, where)
    p = f"modality_encoders.{mod}."
    prenet = int(mcfg.get("prenet_depth", 0))
    depth = int(cfg.get("depth", 8))
    dim = int(cfg.get("embed_dim", 768))
    alibi = bool(mcfg.get("use_alibi_encoder", False))
    per_layer = alibi and bool(mcfg.get("learned_alibi_scale_per_layer", False))
    if alibi:
        require(mcfg, "learned_alibi", False, where, "learned ALiBi tables")
        if int(mcfg.get("num_alibi_heads", cfg.get("num_heads", 12))) != int(cfg.get("num_heads", 12)):
            raise ConfigError(f"{where}: num_alibi_heads must equal num_heads")
    transformer = TransformerConfig(
        dim=dim,
        depth=prenet + depth,
        num_heads=int(cfg.get("num_heads", 12)),
        ffn_dim=int(dim * float(cfg.get("mlp_ratio", 4.0))),
        norm_eps=float(cfg.get("norm_eps", 1e-6)),
        dropout=float(cfg.get("encoder_dropout", 0.1)),
        attn_dropout=float(cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(cfg.get("activation_dropout", 0.0)),
        layerdrop=float(cfg.get("layerdrop", 0.0)),
        alibi=alibi,
        alibi_per_layer=per_layer,
    )
    notes: list[str] = []
    dst: dict = {}
    build = {"AUDIO": _audio, "IMAGE": _image, "TEXT": _text}[mod]
    encoder, preprocessing = build(w, p, mcfg, ckpt.cfg.get("task") or {}, dst, transformer, notes, where)
    targets = target_config(cfg, depth, notes)
    config = Data2VecConfig(
        MODALITIES[mod], 2, transformer, prenet_depth=prenet, targets=targets, **{MODALITIES[mod]: encoder}
    )
    for i in range(prenet):
        _block(dst, w, i, f"{p}context_encoder.blocks.{i}.", dim)
    for i in range(depth):
        _block(dst, w, prenet + i, f"blocks.{i}.", dim)
    if alibi:  # fairseq: (layers or 1, 1, heads or 1, 1, 1); prenet blocks first, as here
        scale = w(p + "alibi_scale").flatten(1)
        scale = scale.expand(scale.shape[0], transformer.num_heads)
        if per_layer and scale.shape[0] != transformer.depth:
            raise ConfigError(f"{where}: {scale.shape[0]} per-layer ALiBi scales for {transformer.depth} blocks")
        dst["transformer.alibi.scale"] = (scale if per_layer else scale[0]).clone()
    embedding = EmbeddingConfig(top_k=targets.top_k, norm="layer", pooling="mean")
    ignore = (p + "decoder.", "shared_decoder.", "recon_proj.")
    unused = w.unused(ignore=ignore)
    if unused:
        raise ConfigError(f"{where}: weights the converter does not understand: {unused[:5]}")
    dropped = sorted({prefix.rstrip(".") for prefix in ignore if any(k.startswith(prefix) for k in state)})
    return Converted(config, dst, preprocessing, embedding, dropped, notes)


def _block(dst: dict, w: Weights, i: int, src: str, dim: int) -> None:
    put_block(
        dst,
        i,
        qkv=w.pair(src + "attn.qkv"),
        out=w.pair(src + "attn.proj"),
        fc1=w.pair(src + "mlp.fc1"),
        fc2=w.pair(src + "mlp.fc2"),
        norm1=w.norm(src + "norm1", dim),
        norm2=w.norm(src + "norm2", dim),
    )


def _no_extra_tokens(mcfg: dict, where: str, mod: str) -> None:
    if int(mcfg.get("num_extra_tokens", 0)) != 0:
        raise ConfigError(f"{where}: {mod} with num_extra_tokens > 0 is not supported")


def _audio(w: Weights, p: str, mcfg: dict, task: dict, dst: dict, t: TransformerConfig, notes: list, where: str):
    require(mcfg, "conv_pos_pre_ln", False, where, "a LayerNorm before the positional conv")
    _no_extra_tokens(mcfg, where, "audio")
    spec = parse_conv_spec(
        mcfg.get("feature_encoder_spec", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"), where
    )
    fairseq_mode = mcfg.get("extractor_mode", "layer_norm")
    depth = int(mcfg.get("conv_pos_depth", 5))
    encoder = AudioEncoderConfig(
        conv_layers=spec,
        extractor_mode=extractor_mode(fairseq_mode, where),
        conv_bias=False,
        pos_conv_width=int(mcfg.get("conv_pos_width", 95)),
        pos_conv_depth=depth,
        pos_conv_groups=int(mcfg.get("conv_pos_groups", 16)),
        norm_eps=t.norm_eps,
        dropout=float(mcfg.get("prenet_dropout", 0.0)),
    )
    if t.norm_eps != 1e-5:
        notes.append(f"audio projection LayerNorm eps {t.norm_eps:g} (fairseq: 1e-5 there, norm_eps elsewhere)")
    put_feature_extractor(dst, w, p + "local_encoder.", len(spec), fairseq_mode, False)
    put_pair(dst, "front_end.projection_norm", w.pair(p + "project_features.1"))
    put_pair(dst, "front_end.projection", w.pair(p + "project_features.2"))
    dst["front_end.mask_embedding"] = torch.zeros(t.dim)  # 2.0 masks audio by zeroing frames
    for i in range(depth):
        put_pair(dst, f"front_end.pos_conv.convs.{i}", w.pair(f"{p}relative_positional_encoder.{i + 1}.0"))
    put_pair(dst, "front_end.context_norm", w.norm(p + "context_encoder.norm", t.dim))
    preprocessing = AudioPreprocessingConfig(
        sample_rate=int(task.get("sample_rate", 16000)), normalize=bool(task.get("normalize", False))
    )
    return encoder, preprocessing


def _image(w: Weights, p: str, mcfg: dict, task: dict, dst: dict, t: TransformerConfig, notes: list, where: str):
    require(mcfg, "use_alibi_encoder", False, where, "2-D ALiBi for images")
    if int(mcfg.get("num_extra_tokens", 0)) != 1:
        raise ConfigError(f"{where}: images need exactly one extra token (the CLS), got {mcfg.get('num_extra_tokens')}")
    if int(mcfg.get("embed_dim", t.dim)) != t.dim:
        raise ConfigError(f"{where}: an image patch width other than the model width is not supported")
    size, patch = int(mcfg.get("input_size", 224)), int(mcfg.get("patch_size", 16))
    fixed = bool(mcfg.get("fixed_positions", True))
    encoder = ImageEncoderConfig(
        image_size=size,
        patch_size=patch,
        in_chans=int(mcfg.get("in_chans", 3)),
        positions="sincos" if fixed else "none",
    )
    if fixed:
        stored = w(p + "fixed_positional_encoder.positions").reshape(-1, t.dim)
        ours = sincos_positions_2d(t.dim, encoder.grid_size)
        if stored.shape != ours.shape or (stored - ours).abs().max() > 1e-5:
            raise ConfigError(f"{where}: the stored fixed positions are not MAE's 2-D sin-cos table")
    put_pair(dst, "front_end.patch_embed", w.pair(p + "local_encoder.proj"))
    dst["front_end.cls_token"] = w(p + "extra_tokens")
    dst["front_end.mask_token"] = torch.zeros(1, 1, t.dim)  # 2.0 removes masked patches instead
    put_pair(dst, "front_end.context_norm", w.norm(p + "context_encoder.norm", t.dim))
    preprocessing = ImagePreprocessingConfig(image_size=size, resize_size=round(size * 256 / 224))
    return encoder, preprocessing


def _text(w: Weights, p: str, mcfg: dict, task: dict, dst: dict, t: TransformerConfig, notes: list, where: str):
    _no_extra_tokens(mcfg, where, "text")
    require(mcfg, "learned_pos", True, where, "only learned positions")
    require(mcfg, "layernorm_embedding", True, where, "the text front end always has the embedding LayerNorm")
    require(mcfg, "no_token_positional_embeddings", False, where, "positions are required")
    tokens = w(p + "local_encoder.embed_tokens.weight")
    positions = w(p + "local_encoder.embed_positions.weight")
    scale = 1.0 if mcfg.get("no_scale_embedding", True) else t.dim**0.5
    if scale != 1.0:
        notes.append(f"token embeddings multiplied by fairseq's embed_scale {scale:g}")
    prenet = int(mcfg.get("prenet_depth", 0)) > 0  # fairseq builds the context LayerNorm only then
    encoder = TextEncoderConfig(
        vocab_size=tokens.shape[0],
        pad_id=1,
        max_positions=positions.shape[0],
        dropout=float(mcfg.get("dropout", 0.1)),
        context_norm=prenet,
    )
    dst["front_end.token_embedding.weight"] = tokens * scale
    dst["front_end.position_embedding.weight"] = positions
    put_pair(dst, "front_end.norm", w.pair(p + "local_encoder.layernorm_embedding"))
    if prenet:
        put_pair(dst, "front_end.context_norm", w.norm(p + "context_encoder.norm", t.dim))
    return encoder, TextPreprocessingConfig(max_length=min(512, encoder.max_tokens), pad_id=1)
