"""Preprocessing parameters: part of a model's input contract.

They travel in the checkpoint's ``config.json`` and the export's ``model.json``; training, export
parity checks, the embedded engine and Triton's python backend all build their preprocessor from them.
Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

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
    return asdict(cfg)


def preprocessing_from_dict(data: dict[str, Any]) -> PreprocessingConfig:
    """Rebuild from JSON; unknown keys are an error (a typo must not silently become a default)."""
    from d2v.errors import ConfigError

    modality = data.get("modality")
    if modality not in _BY_MODALITY:
        raise ConfigError(f"preprocessing.modality must be one of {sorted(_BY_MODALITY)}, got {modality!r}")
    cls = _BY_MODALITY[modality]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown preprocessing field(s) for {modality}: {unknown}")
    values = dict(data)
    for key in ("mean", "std"):
        if key in values:
            values[key] = tuple(float(v) for v in values[key])
    return cls(**values)
