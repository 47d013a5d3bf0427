"""data2vec 1.0 text (fairseq ``Data2VecTextModel``, model ``data2vec_text``) -> project checkpoint.

Layout (``examples/data2vec/models/data2vec_text.py`` on fairseq's ``TransformerEncoder`` with
``return_fc=True``): ``embed_scale * embed_tokens`` + learned ``embed_positions`` (fairseq ``make_positions``:
padding offset ``pad + 1``) -> ``layernorm_embedding`` -> post-LN layers. ``regression_head``, ``lm_head``
and classification heads are dropped. The EMA teacher covers ``encoder.sentence_encoder``.
"""

from __future__ import annotations

import math
from typing import Any

from d2v.core.errors import ConfigError
from d2v.models.config import Data2VecConfig, EmbeddingConfig, TextEncoderConfig, TransformerConfig
from d2v.models.preprocessing.config import TextPreprocessingConfig

from .common import Converted, FairseqCheckpoint, Weights, put_fairseq_layers, put_pair, require, target_config

EMA_PREFIX = "encoder.sentence_encoder."
_P = EMA_PREFIX


def convert(ckpt: FairseqCheckpoint, state: dict, where: str) -> Converted:
    cfg: dict[str, Any] = ckpt.model_cfg
    t = cfg.get("transformer") or {}
    enc = t.get("encoder") or {}
    require(t, "activation_fn", "gelu", where, "the project's blocks use exact GELU")
    require(t, "layernorm_embedding", True, where, "the project's text front end always has the embedding LayerNorm")
    require(t, "no_token_positional_embeddings", False, where, "positions are required")
    require(enc, "learned_pos", True, where, "only learned positions")
    pre_ln = bool(enc.get("normalize_before", False))
    w = Weights(state, where)
    tokens = w(_P + "embed_tokens.weight")
    positions = w(_P + "embed_positions.weight")
    dim = tokens.shape[1]
    pad_id = 1  # fairseq Dictionary: <s> <pad> </s> <unk>
    transformer = TransformerConfig(
        dim=dim,
        depth=int(enc.get("layers", 12)),
        num_heads=int(enc.get("attention_heads", 12)),
        ffn_dim=int(enc.get("ffn_embed_dim", 3072)),
        layer_norm_first=pre_ln,
        final_norm=pre_ln and w.has(_P + "layer_norm.weight"),
        dropout=float(t.get("dropout", 0.1)),
        attn_dropout=float(t.get("attention_dropout", 0.1)),
        activation_dropout=float(t.get("activation_dropout", 0.0)),
        layerdrop=float(enc.get("layerdrop", 0.0)),
    )
    text = TextEncoderConfig(
        vocab_size=tokens.shape[0],
        pad_id=pad_id,
        max_positions=positions.shape[0],
        dropout=float(t.get("dropout", 0.1)),
    )
    notes: list[str] = []
    config = Data2VecConfig("text", 1, transformer, text=text, targets=target_config(cfg, transformer.depth, notes))

    scale = 1.0 if t.get("no_scale_embedding", False) else math.sqrt(dim)
    if scale != 1.0:
        notes.append(f"token embeddings multiplied by fairseq's embed_scale {scale:g}")
    dst: dict = {
        "front_end.token_embedding.weight": tokens * scale,
        "front_end.position_embedding.weight": positions,
    }
    put_pair(dst, "front_end.norm", w.pair(_P + "layernorm_embedding"))
    if transformer.final_norm:
        put_pair(dst, "transformer.final_norm", w.pair(_P + "layer_norm"))
    put_fairseq_layers(dst, w, f"{_P}layers.", transformer.depth)
    heads = ("encoder.regression_head.", "encoder.lm_head.", "classification_heads.")
    unused = w.unused(ignore=(*heads, _P + "version"))
    if unused:
        raise ConfigError(f"{where}: weights the converter does not understand: {unused[:5]}")
    preprocessing = TextPreprocessingConfig(max_length=min(512, text.max_tokens), pad_id=pad_id)
    embedding = EmbeddingConfig(top_k=config.targets.top_k, norm="layer", pooling="mean")
    dropped = sorted({h.rstrip(".") for h in heads if any(k.startswith(h) for k in state)})
    return Converted(config, dst, preprocessing, embedding, dropped, notes)
