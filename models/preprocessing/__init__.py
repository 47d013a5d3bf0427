"""Preprocessing for data2vec models: the only place raw text, audio and images become model inputs.

Torch-free (numpy, tokenizers, Pillow, soundfile, soxr): the server, Triton's python backend, training and
the export parity checks all build their preprocessor here from the model's ``PreprocessingConfig``::

    pre = build_preprocessor(checkpoint.preprocessing, checkpoint.path)
    batch = pre.collate([pre.load_item(x) for x in raw_inputs])   # or simply pre(raw_inputs)
    # text: {"input_ids", "attention_mask"}; audio: {"input_values", "attention_mask"}; image: {"pixel_values"}
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from d2v.core.errors import ConfigError

from .audio import AudioInfo, AudioPreprocessor, crop, duration_seconds, normalize_waveform, probe
from .base import Preprocessor
from .config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AudioPreprocessingConfig,
    ImagePreprocessingConfig,
    PreprocessingConfig,
    TextPreprocessingConfig,
    preprocessing_from_dict,
    preprocessing_to_dict,
)
from .image import (
    DEFAULT_MAX_PIXELS,
    ImagePreprocessor,
    center_crop,
    hflip,
    normalize,
    open_image,
    random_resized_crop,
    resize_center_crop,
    resize_shorter_side,
    to_chw_float,
    to_rgb,
)
from .text import SPECIAL_TOKENS, TextPreprocessor, load_tokenizer, train_bpe_tokenizer

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPECIAL_TOKENS",
    "AudioInfo",
    "AudioPreprocessingConfig",
    "AudioPreprocessor",
    "ImagePreprocessingConfig",
    "ImagePreprocessor",
    "PreprocessingConfig",
    "Preprocessor",
    "TextPreprocessingConfig",
    "TextPreprocessor",
    "build_preprocessor",
    "center_crop",
    "crop",
    "duration_seconds",
    "hflip",
    "load_tokenizer",
    "normalize",
    "normalize_waveform",
    "open_image",
    "preprocessing_from_dict",
    "preprocessing_to_dict",
    "probe",
    "random_resized_crop",
    "resize_center_crop",
    "resize_shorter_side",
    "to_chw_float",
    "to_rgb",
    "train_bpe_tokenizer",
]


def build_preprocessor(
    cfg: PreprocessingConfig | dict[str, Any], base_dir: str | Path | None = None, **limits: Any
) -> TextPreprocessor | AudioPreprocessor | ImagePreprocessor:
    """The preprocessor for a model's preprocessing config (a dataclass or its ``asdict`` form).

    ``base_dir`` is the checkpoint / export directory (text: where ``tokenizer_file`` lives). ``limits`` go to
    the constructor so a caller can tighten them: ``max_length``/``truncate`` (text), ``max_seconds``
    (audio), ``max_pixels`` (image).
    """
    if isinstance(cfg, dict):
        cfg = preprocessing_from_dict(cfg)
    if isinstance(cfg, TextPreprocessingConfig):
        cls, args = TextPreprocessor, (cfg, base_dir)
    elif isinstance(cfg, AudioPreprocessingConfig):
        cls, args = AudioPreprocessor, (cfg,)
    elif isinstance(cfg, ImagePreprocessingConfig):
        cls, args = ImagePreprocessor, (cfg,)
    else:
        raise ConfigError(f"not a preprocessing config: {type(cfg).__name__}")
    accepted = {
        name
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(limits) - accepted)
    if unknown:
        raise ConfigError(f"{cfg.modality} preprocessing has no option(s) {unknown}; accepted: {sorted(accepted)}")
    return cls(*args, **limits)
