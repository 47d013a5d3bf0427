"""``d2v convert hf SRC OUT``: Hugging Face ``Data2VecText/Audio/VisionModel`` -> project checkpoint.

SRC is a ``save_pretrained`` directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``,
the latter read with ``torch.load(weights_only=True)``) or a hub id (downloaded with ``huggingface_hub`` only
when SRC is not a local directory). transformers itself is not needed. Spec §7 pitfalls handled here:
``num_conv_pos_embeddings`` is the number of pos-conv layers for data2vec audio (not the kernel), the vision
``layer_norm_eps`` comes from config.json, vision uses one shared relative-position table, text positions
carry fairseq's padding offset, and HF text's single token-type row is folded into the position table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from d2v.core.errors import ConfigError, NotFound
from d2v.models.checkpoint import save_checkpoint
from d2v.models.config import (
    AudioEncoderConfig,
    Data2VecConfig,
    ImageEncoderConfig,
    TargetConfig,
    TextEncoderConfig,
    TransformerConfig,
    default_embedding_config,
)
from d2v.models.model import Data2VecModel
from d2v.models.preprocessing.config import (
    AudioPreprocessingConfig,
    ImagePreprocessingConfig,
    TextPreprocessingConfig,
)

# Prefixes under which task models (``...ForCTC``, ``...ForMaskedLM``, ...) store the base model.
_BASE_PREFIXES = ("data2vec_audio.", "data2vec_text.", "data2vec_vision.")
_MODEL_TYPES = {"data2vec-audio": "audio", "data2vec-text": "text", "data2vec-vision": "image"}


def convert_hf(src: str | os.PathLike, out: str | os.PathLike, *, no_tokenizer: bool = False) -> Path:
    """Convert ``src`` and write the checkpoint to ``out``; returns ``out``."""
    src_dir = _resolve_source(str(src))
    hf = _read_json(src_dir / "config.json")
    modality = _MODEL_TYPES.get(hf.get("model_type", ""))
    if modality is None:
        raise ConfigError(
            f"{src}: unsupported model_type {hf.get('model_type')!r}; expected one of {sorted(_MODEL_TYPES)}"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{src}: hidden_act {hf['hidden_act']!r} is not supported (only exact gelu)")
    weights = _load_weights(src_dir)
    builders = {"audio": _audio, "text": _text, "image": _image}
    config, mapped, preprocessing = builders[modality](hf, weights, src_dir)
    tokenizer = None
    if modality == "text":
        tokenizer = src_dir / "tokenizer.json"
        if not tokenizer.is_file():
            if not no_tokenizer:
                raise NotFound(f"{src} has no tokenizer.json (convert the tokenizer first, or pass --no-tokenizer)")
            tokenizer = None

    model = Data2VecModel(config)
    state = model.state_dict()
    unexpected = sorted(set(mapped) - set(state))
    if unexpected:
        raise ConfigError(f"{src}: converter produced unknown parameters {unexpected[:5]}")
    for name, tensor in mapped.items():
        if state[name].shape != tensor.shape:
            raise ConfigError(f"{src}: {name} has shape {list(tensor.shape)}, expected {list(state[name].shape)}")
    # Parameters HF may lack (mask embedding / mask token of models saved without one) keep their init.
    missing = sorted(set(state) - set(mapped) - {"front_end.mask_embedding", "front_end.mask_token"})
    if missing:
        raise ConfigError(f"{src}: no weights for {missing[:5]}")
    model.load_state_dict({**state, **{k: v.to(state[k].dtype) for k, v in mapped.items()}})
    source = {"type": "huggingface", "src": str(src), "model_type": hf["model_type"]}
    embedding = default_embedding_config(modality, config.transformer.depth)
    return save_checkpoint(out, model, preprocessing, embedding, tokenizer_json=tokenizer, source=source)


# ------------------------------------------------------------------------------------------ sources


def _resolve_source(src: str) -> Path:
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists() or src.startswith((".", "/", "~")) or src.count("/") != 1:
        raise NotFound(f"{src} is not a directory with a Hugging Face model (nor a hub id like 'org/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise NotFound(f"{src} is not a local directory and huggingface_hub is not installed") from None
    patterns = ["*.json", "*.safetensors", "pytorch_model.bin", "*.txt"]
    try:
        return Path(snapshot_download(src, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        raise NotFound(f"could not download {src!r} from the Hugging Face Hub ({type(exc).__name__}: {exc})") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NotFound(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def _load_weights(src: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if (src / "model.safetensors").is_file():
        state = load_file(str(src / "model.safetensors"))
    elif (src / "model.safetensors.index.json").is_file():
        shards = sorted(set(_read_json(src / "model.safetensors.index.json")["weight_map"].values()))
        state = {k: v for shard in shards for k, v in load_file(str(src / shard)).items()}
    elif (src / "pytorch_model.bin").is_file():
        state = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise NotFound(f"{src} has no model.safetensors or pytorch_model.bin")
    for prefix in _BASE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


class _Weights:
    """HF tensors by name, with a clear error for a missing one."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        self.state = state

    def __call__(self, name: str) -> Tensor:
        if name not in self.state:
            raise ConfigError(f"Hugging Face weights lack {name!r}")
        return self.state[name]

    def get(self, name: str) -> Tensor | None:
        return self.state.get(name)

    def pair(self, name: str) -> tuple[Tensor, Tensor]:
        """``(name.weight, name.bias)``."""
        return self(name + ".weight"), self(name + ".bias")


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


# ---------------------------------------------------------------------------------------- modalities


def _audio(hf: dict[str, Any], state: dict[str, Tensor], src: Path):
    if hf.get("add_adapter"):
        raise ConfigError("Data2VecAudio models with an adapter are not supported")
    w = _Weights(state)
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
    if w.get("masked_spec_embed") is not None:
        dst["front_end.mask_embedding"] = w("masked_spec_embed")

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
    pre = _read_optional_json(src / "preprocessor_config.json")
    preprocessing = AudioPreprocessingConfig(
        sample_rate=int(pre.get("sampling_rate", 16000)), normalize=bool(pre.get("do_normalize", True))
    )
    return config, dst, preprocessing


def _text(hf: dict[str, Any], state: dict[str, Tensor], src: Path):
    w = _Weights(state)
    pad_id = hf.get("pad_token_id", 1)
    transformer = _transformer(hf, dropout=hf["hidden_dropout_prob"], attn_dropout=hf["attention_probs_dropout_prob"])
    text = TextEncoderConfig(
        vocab_size=hf["vocab_size"],
        pad_id=pad_id,
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
    max_length = min(512, text.max_tokens)
    return config, dst, TextPreprocessingConfig(max_length=max_length, pad_id=pad_id)


def _image(hf: dict[str, Any], state: dict[str, Tensor], src: Path):
    w = _Weights(state)
    if hf.get("use_relative_position_bias"):
        raise ConfigError(
            "per-layer relative position bias (fine-tuned BEiT layout) is not supported; "
            "only use_shared_relative_position_bias"
        )
    image_size, patch_size = _square(hf.get("image_size", 224)), _square(hf.get("patch_size", 16))
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
    if w.get("embeddings.mask_token") is not None:
        dst["front_end.mask_token"] = w("embeddings.mask_token")
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
    pre = _read_optional_json(src / "preprocessor_config.json")
    defaults = ImagePreprocessingConfig(image_size=image_size)
    resize = pre.get("size") or {}  # BEiT processors resize straight to {"height", "width"} = the crop
    preprocessing = ImagePreprocessingConfig(
        image_size=image_size,
        resize_size=int(resize.get("shortest_edge") or resize.get("height") or image_size),
        mean=tuple(float(v) for v in pre.get("image_mean", defaults.mean)),
        std=tuple(float(v) for v in pre.get("image_std", defaults.std)),
    )
    return config, dst, preprocessing


def _square(value: Any) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ConfigError(f"only square images/patches are supported, got {value}")
        value = value[0]
    return int(value)


def _read_optional_json(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.is_file() else {}
