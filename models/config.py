"""Model configuration: small composed dataclasses, JSON round trip, recipe presets. Torch-free.

A checkpoint stores ``to_dict(Data2VecConfig)``; ``Data2VecModel(config)`` rebuilds the module from it.
Every default is a literal; values shared between parts (the transformer width feeds the front end, the
patch grid feeds the relative position bias) are passed explicitly when the model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from d2v.core.errors import ConfigError

Modality = Literal["audio", "image", "text"]
ConvLayerSpec = tuple[int, int, int]  # (out_channels, kernel_size, stride)

# wav2vec 2.0 / data2vec feature extractor: 400-sample receptive field, 320x downsampling (16 kHz -> 50 Hz).
WAV2VEC2_CONV_LAYERS: tuple[ConvLayerSpec, ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass
class TransformerConfig:
    """The shared Transformer stack (all modalities).

    ``layer_norm_first=False`` is the post-LN block of fairseq wav2vec2 / RoBERTa / data2vec 2.0 ``AltBlock``;
    ``True`` the pre-LN BEiT/ViT block. ``drop_path`` is the rate of the last block (linear from 0, as BEiT).
    ``k_bias=False`` drops the key bias (BEiT; a key bias cannot change the softmax anyway).
    ``rel_pos_bias="shared"`` is BEiT's one relative-position table for all layers (window = patch grid, given
    by the image front end). ``alibi`` is data2vec 2.0 audio's symmetric 1-D ALiBi with a learned per-head scale;
    ``alibi_per_layer`` gives every block its own scales (fairseq ``learned_alibi_scale_per_layer``).
    ``init``: ``bert`` = normal(0.02) (fairseq ``init_bert_params``); ``beit`` = trunc-normal(0.02) plus the
    per-depth rescale of the residual output projections (BEiT ``fix_init_weight``).
    """

    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    layer_norm_first: bool = False
    norm_eps: float = 1e-5
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.0
    layerdrop: float = 0.0
    drop_path: float = 0.0
    layer_scale_init: float | None = None
    qkv_bias: bool = True
    k_bias: bool = True
    rel_pos_bias: Literal["none", "shared"] = "none"
    alibi: bool = False
    alibi_per_layer: bool = False
    final_norm: bool = False
    attn_impl: Literal["sdpa", "math"] = "sdpa"
    init: Literal["bert", "beit"] = "bert"

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ConfigError(f"transformer.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.depth < 1:
            raise ConfigError("transformer.depth must be >= 1")
        if self.alibi_per_layer and not self.alibi:
            raise ConfigError("transformer.alibi_per_layer needs transformer.alibi")


@dataclass
class AudioEncoderConfig:
    """Raw waveform -> frames: 7-layer conv feature extractor, LayerNorm + Linear projection, and the
    data2vec convolutional positional encoder (``pos_conv_depth`` grouped convs of kernel
    ``max(3, pos_conv_width // pos_conv_depth)``; fairseq ``conv_pos=95, pos_conv_depth=5`` -> kernel 19)."""

    conv_layers: tuple[ConvLayerSpec, ...] = WAV2VEC2_CONV_LAYERS
    extractor_mode: Literal["layer_norm", "group_norm"] = "layer_norm"
    conv_bias: bool = False
    pos_conv_width: int = 95
    pos_conv_depth: int = 5
    pos_conv_groups: int = 16
    # Re-zero padded frames after every pos-conv layer, so a padded row encodes exactly like the same audio
    # alone (what the model saw in pretraining, where batches are cropped, never padded) and a served embedding
    # does not depend on what it was batched with. False = fairseq/HF padded-batch behaviour (padding leaks into
    # real frames near the end from the 2nd pos-conv layer on); HF parity on padded batches uses False.
    pos_conv_zero_padding: bool = True
    norm_eps: float = 1e-5  # projection LayerNorm and the LayerNorm after the positional conv
    feature_dropout: float = 0.0  # after the projection (fairseq dropout_input, HF feat_proj_dropout)
    dropout: float = 0.1  # after the context LayerNorm, before the first block

    @property
    def pos_conv_kernel(self) -> int:
        return max(3, self.pos_conv_width // self.pos_conv_depth)


@dataclass
class ImageEncoderConfig:
    """16x16 patch embedding + CLS token. ``positions``: ``none`` (v1 / BEiT: shared relative bias in the
    Transformer instead), ``learned`` (absolute, CLS included), ``sincos`` (v2 / MAE: fixed 2-D sin-cos)."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    positions: Literal["none", "learned", "sincos"] = "none"
    dropout: float = 0.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image.image_size ({self.image_size}) must be a multiple of patch_size")


@dataclass
class TextEncoderConfig:
    """Token + learned position embeddings (fairseq/RoBERTa: positions start at ``pad_id + 1``, so
    ``max_positions = 512 + pad_id + 1 = 514``), embedding LayerNorm, dropout. ``context_norm``: a second
    LayerNorm (eps ``transformer.norm_eps``) before the first block, which data2vec 2.0 text has when it has
    prenet blocks."""

    vocab_size: int = 50265
    pad_id: int = 1
    max_positions: int = 514
    norm_eps: float = 1e-5
    dropout: float = 0.1
    context_norm: bool = False

    @property
    def max_tokens(self) -> int:
        return self.max_positions - self.pad_id - 1


@dataclass
class TargetConfig:
    """How the recipe builds its regression targets from the teacher's top-K layers (spec §1.3).
    ``layer_norm`` is applied to each layer before averaging, ``final_norm`` after. ``source`` is the
    per-layer tensor: ``ffn`` (fc2 output, v1 audio/text and v2) or ``block`` (v1 vision)."""

    top_k: int = 8
    layer_norm: Literal["instance", "layer", "none"] = "instance"
    final_norm: Literal["layer", "instance", "none"] = "none"
    source: Literal["ffn", "block"] = "ffn"


@dataclass
class Data2VecConfig:
    """One single-modality data2vec encoder. ``prenet_depth`` (data2vec 2.0) says how many of the
    ``transformer.depth`` blocks are the modality-specific prenet; they run as the first blocks of the one
    stack, so top-K layer selection from the top is unaffected."""

    modality: Modality = "audio"
    version: Literal[1, 2] = 1
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    audio: AudioEncoderConfig | None = None
    image: ImageEncoderConfig | None = None
    text: TextEncoderConfig | None = None
    prenet_depth: int = 0
    targets: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self) -> None:
        if getattr(self, self.modality, None) is None:
            raise ConfigError(f"model.{self.modality} must be set for modality {self.modality!r}")
        if not 0 <= self.prenet_depth < self.transformer.depth:
            raise ConfigError("model.prenet_depth must be in [0, transformer.depth)")
        if not 1 <= self.targets.top_k <= self.transformer.depth:
            raise ConfigError(f"model.targets.top_k must be in [1, {self.transformer.depth}]")
        if self.transformer.rel_pos_bias == "shared" and self.modality != "image":
            raise ConfigError("transformer.rel_pos_bias='shared' needs the image patch grid (modality image)")

    @property
    def encoder(self) -> AudioEncoderConfig | ImageEncoderConfig | TextEncoderConfig:
        return getattr(self, self.modality)


@dataclass
class EmbeddingConfig:
    """Defaults of embedding extraction (``d2v.models.embedding``): average of the top-K block outputs,
    ``norm`` ``layer`` (parameter-free per-token LN) or ``target`` (the recipe's target normalisation),
    and which pooled vector is the default one."""

    top_k: int = 8
    norm: Literal["layer", "target"] = "layer"
    pooling: Literal["mean", "cls"] = "mean"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError("embedding.top_k must be >= 1")


# ------------------------------------------------------------------------------------------- presets

Size = Literal["tiny", "base", "large"]

# (depth, dim, heads, ffn) per size; ``tiny`` builds in milliseconds for CPU tests.
_WIDTH = {"tiny": (4, 64, 4, 128), "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}
_TINY_CONV: tuple[ConvLayerSpec, ...] = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2


def preset(modality: Modality, size: Size = "base", version: Literal[1, 2] = 1) -> Data2VecConfig:
    """The recipe's architecture (spec §3-4) for ``modality``/``size``/``version``; ``tiny`` keeps the
    recipe's structure at a test-friendly width."""
    if size not in _WIDTH or version not in (1, 2) or modality not in ("audio", "image", "text"):
        raise ConfigError(f"no preset for {modality!r} {size!r} v{version}")
    build = {"audio": _audio_preset, "image": _image_preset, "text": _text_preset}[modality]
    return build(size, version)


def _transformer(size: Size, **overrides: Any) -> TransformerConfig:
    depth, dim, heads, ffn = _WIDTH[size]
    return TransformerConfig(dim=dim, depth=depth, num_heads=heads, ffn_dim=ffn, **overrides)


def _audio_preset(size: Size, version: int) -> Data2VecConfig:
    tiny = size == "tiny"
    encoder = AudioEncoderConfig(
        conv_layers=_TINY_CONV if tiny else WAV2VEC2_CONV_LAYERS,
        pos_conv_width=10 if tiny else 95,  # tiny: kernel 5
        pos_conv_depth=2 if tiny else 5,
        pos_conv_groups=4 if tiny else 16,
    )
    if version == 1:
        transformer = _transformer(size, layerdrop=0.0 if tiny else 0.05)
        return Data2VecConfig("audio", 1, transformer, audio=encoder, targets=TargetConfig(min(8, transformer.depth)))
    # v2 Large: 16 main blocks + 8 modality prenet blocks (spec §4.2).
    prenet = {"tiny": 0, "base": 0, "large": 8}[size]
    depth = {"tiny": 4, "base": 12, "large": 16}[size] + prenet
    transformer = dataclasses.replace(_transformer(size, layerdrop=0.0 if tiny else 0.05, alibi=True), depth=depth)
    top_k = {"tiny": 2, "base": 8, "large": 16}[size]
    return Data2VecConfig("audio", 2, transformer, audio=encoder, prenet_depth=prenet, targets=TargetConfig(top_k))


def _image_preset(size: Size, version: int) -> Data2VecConfig:
    tiny = size == "tiny"
    if version == 1:
        encoder = ImageEncoderConfig(image_size=32 if tiny else 224, patch_size=8 if tiny else 16, positions="none")
        transformer = _transformer(
            size,
            layer_norm_first=True,
            norm_eps=1e-6,
            dropout=0.0,
            attn_dropout={"tiny": 0.0, "base": 0.05, "large": 0.15}[size],
            drop_path={"tiny": 0.0, "base": 0.25, "large": 0.2}[size],
            layer_scale_init=1e-5 if size == "large" else 1e-4,
            k_bias=False,
            rel_pos_bias="shared",
            final_norm=True,
            init="beit",
        )
        targets = TargetConfig(min(6, transformer.depth), "layer", "layer", "block")
        return Data2VecConfig("image", 1, transformer, image=encoder, targets=targets)
    encoder = ImageEncoderConfig(image_size=32 if tiny else 224, patch_size=8 if tiny else 16, positions="sincos")
    prenet = {"tiny": 1, "base": 2, "large": 0}[size]
    transformer = _transformer(size, norm_eps=1e-6, dropout=0.0, attn_dropout=0.0)
    targets = TargetConfig({"tiny": 3, "base": 10, "large": 18}[size], "instance", "layer", "ffn")
    return Data2VecConfig("image", 2, transformer, image=encoder, prenet_depth=prenet, targets=targets)


def _text_preset(size: Size, version: int) -> Data2VecConfig:
    tiny = size == "tiny"
    encoder = TextEncoderConfig(vocab_size=128 if tiny else 50265, max_positions=66 if tiny else 514)
    transformer = _transformer(size)
    if version == 1:
        targets = TargetConfig(min(10, transformer.depth), "layer", "none", "ffn")
    elif size == "large":
        targets = TargetConfig(24, "layer", "instance", "ffn")
    else:
        targets = TargetConfig(min(12, transformer.depth), "instance", "none", "ffn")
    return Data2VecConfig("text", version, transformer, text=encoder, targets=targets)


# Default embedding K per modality for 12-layer models (spec §1.3 ablations: audio 8, text 10, vision 6).
_DEFAULT_TOP_K = {"audio": 8, "text": 10, "image": 6}


def default_embedding_config(modality: Modality, depth: int) -> EmbeddingConfig:
    """The modality's default K, scaled down proportionally for models shallower than 12 layers."""
    top_k = _DEFAULT_TOP_K[modality]
    if depth < 12:
        top_k = max(1, round(top_k * depth / 12))
    return EmbeddingConfig(top_k=top_k, norm="layer", pooling="mean")
