"""data2vec 1.0 audio (fairseq ``Data2VecAudioModel``, model ``data2vec_audio``) -> project checkpoint.

Layout (fairseq ``examples/data2vec/models/data2vec_audio.py`` on wav2vec2's ``TransformerEncoder``): conv
feature extractor -> ``layer_norm`` (512) -> ``post_extract_proj`` -> [``mask_emb``] -> encoder: zero the
padded frames, add the ``pos_conv`` stack (``pos_conv_depth`` x Conv1d / LayerNorm without affine / GELU),
``encoder.layer_norm`` (post-LN) -> ``encoder.layers``. ``final_proj`` (the regression head) is dropped. The EMA
teacher covers ``encoder`` only; its ``_ema`` keys are relative to it.
"""

from __future__ import annotations

from typing import Any

from d2v.core.errors import ConfigError
from d2v.models.config import AudioEncoderConfig, Data2VecConfig, EmbeddingConfig, TransformerConfig
from d2v.models.preprocessing.config import AudioPreprocessingConfig

from .common import (
    Converted,
    FairseqCheckpoint,
    Weights,
    extractor_mode,
    parse_conv_spec,
    put_fairseq_layers,
    put_feature_extractor,
    put_pair,
    require,
    target_config,
)

EMA_PREFIX = "encoder."
WAV2VEC2_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"


def convert(ckpt: FairseqCheckpoint, state: dict, where: str) -> Converted:
    cfg: dict[str, Any] = ckpt.model_cfg
    require(cfg, "activation_fn", "gelu", where, "the project's blocks use exact GELU")
    require(cfg, "layer_type", "transformer", where, "only the plain Transformer encoder layer")
    depth = int(cfg.get("pos_conv_depth", 1))
    if depth < 2:
        raise ConfigError(f"{where}: pos_conv_depth={depth} (wav2vec 2.0's weight-normalised conv) is not supported")
    spec = parse_conv_spec(cfg.get("conv_feature_layers", WAV2VEC2_CONV), where)
    mode = extractor_mode(cfg.get("extractor_mode", "default"), where)
    pre_ln = bool(cfg.get("layer_norm_first", False))
    transformer = TransformerConfig(
        dim=int(cfg["encoder_embed_dim"]),
        depth=int(cfg["encoder_layers"]),
        num_heads=int(cfg["encoder_attention_heads"]),
        ffn_dim=int(cfg["encoder_ffn_embed_dim"]),
        layer_norm_first=pre_ln,
        final_norm=pre_ln,  # wav2vec2's encoder applies its layer_norm after the layers when pre-LN
        dropout=float(cfg.get("dropout", 0.1)),
        attn_dropout=float(cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(cfg.get("activation_dropout", 0.0)),
        layerdrop=float(cfg.get("encoder_layerdrop", 0.0)),
    )
    audio = AudioEncoderConfig(
        conv_layers=spec,
        extractor_mode=mode,
        conv_bias=bool(cfg.get("conv_bias", False)),
        pos_conv_width=int(cfg.get("conv_pos", 128)),
        pos_conv_depth=depth,
        pos_conv_groups=int(cfg.get("conv_pos_groups", 16)),
        feature_dropout=float(cfg.get("dropout_input", 0.0)),
        dropout=float(cfg.get("dropout", 0.1)),
    )
    notes: list[str] = []
    config = Data2VecConfig("audio", 1, transformer, audio=audio, targets=target_config(cfg, transformer.depth, notes))

    w = Weights(state, where)
    dst: dict = {}
    put_feature_extractor(
        dst, w, "feature_extractor.", len(spec), cfg.get("extractor_mode", "default"), audio.conv_bias
    )
    put_pair(dst, "front_end.projection_norm", w.pair("layer_norm"))
    put_pair(dst, "front_end.projection", w.pair("post_extract_proj"))
    dst["front_end.mask_embedding"] = w("mask_emb")
    for i in range(depth):
        put_pair(dst, f"front_end.pos_conv.convs.{i}", w.pair(f"encoder.pos_conv.{i}.0"))
    put_pair(dst, "transformer.final_norm" if pre_ln else "front_end.context_norm", w.pair("encoder.layer_norm"))
    put_fairseq_layers(dst, w, "encoder.layers.", transformer.depth)
    task = ckpt.cfg.get("task") or {}
    preprocessing = AudioPreprocessingConfig(
        sample_rate=int(task.get("sample_rate", 16000)), normalize=bool(task.get("normalize", False))
    )
    embedding = EmbeddingConfig(top_k=config.targets.top_k, norm="layer", pooling="mean")
    unused = w.unused(ignore=("final_proj.",))
    if unused:
        raise ConfigError(f"{where}: weights the converter does not understand: {unused[:5]}")
    dropped = ["final_proj"] if w.has("final_proj.weight") else []
    return Converted(config, dst, preprocessing, embedding, dropped, notes)
