"""A Hugging Face repo's preprocessing files -> our ``PreprocessingConfig`` (and, for text, the tokenizer).

Text: ``tokenizer.json`` as is, or else the byte-level BPE that transformers' RoBERTa tokenizer builds from
``vocab.json`` + ``merges.txt`` with ``tokenizer_config.json`` / ``special_tokens_map.json`` /
``added_tokens.json`` (special tokens and their strip flags, ``model_max_length``, ``add_prefix_space``,
``trim_offsets``, lowercasing). Audio / image: ``preprocessor_config.json`` when present. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from d2v.core.errors import ConfigError, NotFound
from d2v.models.preprocessing.config import (
    AudioPreprocessingConfig,
    ImagePreprocessingConfig,
    TextPreprocessingConfig,
)
from d2v.models.preprocessing.text import build_roberta_tokenizer, load_tokenizer, roberta_special_tokens

_ROLES = ("bos", "eos", "sep", "cls", "unk", "pad", "mask")
# transformers' "no limit" sentinel for model_max_length is int(1e30); anything this large means "unset".
_UNSET_MAX_LENGTH = 10**9
_ROBERTA_CLASSES = {None, "RobertaTokenizer", "RobertaTokenizerFast"}
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling codes in preprocessor_config.json


@dataclass
class HFText:
    """A text repo's tokenizer: ``tokenizer`` (None when the repo has none), where it came from, and notes."""

    tokenizer: Tokenizer | None
    origin: str | None
    model_max_length: int | None
    notes: list[str] = field(default_factory=list)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NotFound(f"{path} not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def read_optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def hf_text_tokenizer(src: Path) -> HFText:
    """The tokenizer of text repo ``src``: ``tokenizer.json``, else built from ``vocab.json`` + ``merges.txt``."""
    config = read_optional_json(src / "tokenizer_config.json")
    max_length = config.get("model_max_length", config.get("max_len"))
    max_length = int(max_length) if isinstance(max_length, int | float) and max_length < _UNSET_MAX_LENGTH else None
    if (src / "tokenizer.json").is_file():
        return HFText(load_tokenizer(src / "tokenizer.json"), "tokenizer.json", max_length)
    if not (src / "vocab.json").is_file():
        return HFText(None, None, max_length)
    if not (src / "merges.txt").is_file():
        raise NotFound(f"{src} has vocab.json but no merges.txt (a byte-level BPE needs both)")
    if config.get("tokenizer_class") not in _ROBERTA_CLASSES:
        raise ConfigError(
            f"{src}: tokenizer_class {config['tokenizer_class']!r} without tokenizer.json is not supported "
            "(vocab.json + merges.txt are read as a RoBERTa byte-level BPE)"
        )
    specials, numbered = _special_tokens(src, config)
    lowercase = bool(config.get("do_lower_case") or config.get("lowercase"))
    tokenizer = build_roberta_tokenizer(
        src / "vocab.json",
        src / "merges.txt",
        special_tokens=specials,
        added_tokens=[token for _, token in sorted(numbered.items())],
        add_prefix_space=bool(config.get("add_prefix_space", False)),
        trim_offsets=bool(config.get("trim_offsets", True)),
        lowercase=lowercase,
    )
    for token_id, token in numbered.items():
        if tokenizer.token_to_id(token.content) != token_id:
            raise ConfigError(
                f"{src}: added token {token.content!r} is declared with id {token_id} but vocab.json puts it "
                f"at {tokenizer.token_to_id(token.content)}"
            )
    files = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
    extras = " + ".join(name for name in files if (src / name).is_file())
    notes = []
    if lowercase:
        notes.append("tokenizer_config.json asks for lowercasing: text is lowercased before BPE")
    return HFText(tokenizer, "vocab.json + merges.txt" + (f" + {extras}" if extras else ""), max_length, notes)


def _added_token(value: dict[str, Any], *, special: bool) -> AddedToken:
    if not isinstance(value.get("content"), str):
        raise ConfigError(f"added token without a string 'content': {value}")
    return AddedToken(
        value["content"],
        single_word=bool(value.get("single_word", False)),
        lstrip=bool(value.get("lstrip", False)),
        rstrip=bool(value.get("rstrip", False)),
        normalized=bool(value.get("normalized", not special)),
        special=bool(value.get("special", special)),
    )


def _special_tokens(src: Path, config: dict[str, Any]) -> tuple[dict[str, AddedToken], dict[int, AddedToken]]:
    """Roles as transformers resolves them (special_tokens_map.json over tokenizer_config.json; a token's flags
    from ``added_tokens_decoder`` over the role's own), and every token that has an explicit id."""
    numbered = {
        int(token_id): _added_token(value, special=True)
        for token_id, value in (config.get("added_tokens_decoder") or {}).items()
    }
    for content, token_id in read_optional_json(src / "added_tokens.json").items():
        if int(token_id) not in numbered:
            numbered[int(token_id)] = AddedToken(content, normalized=False, special=True)
    by_content = {token.content: token for token in numbered.values()}
    roles = {**config, **read_optional_json(src / "special_tokens_map.json")}
    overrides: dict[str, str | AddedToken] = {}
    for role in _ROLES:
        value = roles.get(f"{role}_token")
        if isinstance(value, dict):
            value = _added_token(value, special=True)
        content = value.content if isinstance(value, AddedToken) else value
        if isinstance(content, str):
            overrides[role] = by_content.get(content, value)
    return roberta_special_tokens(**overrides), numbered


def text_preprocessing(hf_text: HFText, pad_id: int, max_tokens: int) -> TextPreprocessingConfig:
    """``max_length`` = the tokenizer's ``model_max_length`` (else RoBERTa's 512), never past the positions."""
    return TextPreprocessingConfig(max_length=min(hf_text.model_max_length or 512, max_tokens), pad_id=pad_id)


def audio_preprocessing(src: Path) -> AudioPreprocessingConfig:
    pre = read_optional_json(src / "preprocessor_config.json")
    return AudioPreprocessingConfig(
        sample_rate=int(pre.get("sampling_rate", 16000)), normalize=bool(pre.get("do_normalize", True))
    )


def image_preprocessing(src: Path, image_size: int) -> tuple[ImagePreprocessingConfig, list[str]]:
    """BEiT/data2vec-vision ``preprocessor_config.json``: resize, center crop, resample, mean/std. Ours resizes
    the shorter side then center-crops the model's ``image_size``; what cannot be kept is said in the notes."""
    pre = read_optional_json(src / "preprocessor_config.json")
    defaults = ImagePreprocessingConfig(image_size=image_size)
    if not pre:
        return defaults, []
    if not pre.get("do_rescale", True) or abs(float(pre.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ConfigError("preprocessor_config.json: only pixel values rescaled by 1/255 are supported")
    notes: list[str] = []
    size = pre.get("size", defaults.resize_size) if pre.get("do_resize", True) else image_size
    if isinstance(size, dict):
        if "height" in size and size.get("height") != size.get("width"):
            raise ConfigError(f"preprocessor_config.json: only square resizing is supported, got size {size}")
        if "height" in size:
            notes.append("transformers resizes images to height x width; served images keep their aspect ratio")
        size = size.get("shortest_edge", size.get("height"))
    size = int(size or defaults.resize_size)
    fed = pre.get("crop_size", image_size) if pre.get("do_center_crop", True) else size
    fed = int(fed.get("height", image_size) if isinstance(fed, dict) else fed)
    if fed != image_size:
        notes.append(
            f"preprocessor_config.json gives {fed}px images, the model takes {image_size}px: using {image_size}"
        )
    if not pre.get("do_center_crop", True):
        size = image_size  # no crop: the whole (square) resized image goes in
    interpolation = _PIL_RESAMPLE.get(pre.get("resample", 3))
    if interpolation is None:
        notes.append(f"resample {pre['resample']} is not supported: using bicubic")
    normalize = pre.get("do_normalize", True)
    preprocessing = ImagePreprocessingConfig(
        image_size=image_size,
        resize_size=max(size, image_size),
        mean=tuple(float(v) for v in pre.get("image_mean", defaults.mean)) if normalize else (0.0, 0.0, 0.0),
        std=tuple(float(v) for v in pre.get("image_std", defaults.std)) if normalize else (1.0, 1.0, 1.0),
        interpolation=interpolation or "bicubic",
    )
    return preprocessing, notes
