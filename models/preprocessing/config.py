"""Preprocessing parameters: part of a model's input contract.

They travel in the checkpoint's ``config.json`` and the export's ``model.json``; training, export
parity checks, the embedded engine and Triton's python backend all build their preprocessor from them.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from d2v.core.config import from_dict, to_dict
from d2v.core.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TextPreprocessingConfig:
    modality: Literal["text"] = "text"
    tokenizer_file: str = "tokenizer.json"  # relative to the checkpoint / export directory
    max_length: int = 512  # tokens including the special ones; longer inputs are truncated or refused
    pad_id: int = 1  # RoBERTa/fairseq dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3


@dataclass
class AudioPreprocessingConfig:
    modality: Literal["audio"] = "audio"
    sample_rate: int = 16_000
    normalize: bool = True  # zero mean / unit variance per utterance (data2vec: task.normalize=true)
    max_seconds: float = 30.0


@dataclass
class ImagePreprocessingConfig:
    modality: Literal["image"] = "image"
    image_size: int = 224  # square crop fed to the model
    resize_size: int = 256  # shorter side before the center crop (eval)
    mean: tuple[float, float, float] = field(default_factory=lambda: IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default_factory=lambda: IMAGENET_STD)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"


PreprocessingConfig = TextPreprocessingConfig | AudioPreprocessingConfig | ImagePreprocessingConfig

_BY_MODALITY = {
    "text": TextPreprocessingConfig,
    "audio": AudioPreprocessingConfig,
    "image": ImagePreprocessingConfig,
}


def preprocessing_to_dict(cfg: PreprocessingConfig) -> dict[str, Any]:
    return to_dict(cfg)


def preprocessing_from_dict(data: dict[str, Any]) -> PreprocessingConfig:
    """Rebuild from JSON: the ``modality`` key picks the class, the project's converter does the rest."""
    modality = data.get("modality") if isinstance(data, dict) else None
    if modality not in _BY_MODALITY:
        raise ConfigError(f"preprocessing.modality must be one of {sorted(_BY_MODALITY)}, got {modality!r}")
    return from_dict(_BY_MODALITY[modality], data, where="preprocessing")
