"""``d2v convert hf SRC OUT``: a Hugging Face data2vec repo, as shipped -> project checkpoint.

SRC is a ``save_pretrained`` directory or a hub id (downloaded with ``huggingface_hub`` only when SRC is not
a local directory); transformers itself is not needed. Accepted, as the hub has them:

* weights: ``model.safetensors``, sharded safetensors (``model.safetensors.index.json``), ``pytorch_model.bin``
  or sharded ``pytorch_model.bin.index.json`` (read with ``torch.load(weights_only=True)``, never unpickled);
* the base models ``Data2VecAudio/Text/VisionModel`` and their task models (``...ForCTC``,
  ``...ForSequenceClassification``, ``...ForXVector``, ``...ForMaskedLM``, ``...ForImageClassification`` ...):
  the base model is converted, every tensor outside it (heads, poolers) is dropped and reported by prefix;
* preprocessing from ``preprocessor_config.json`` and, for text, the tokenizer (``hf_preprocessing``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from d2v.core.errors import ConfigError, NotFound
from d2v.models.checkpoint import TOKENIZER_FILE, save_checkpoint
from d2v.models.config import default_embedding_config
from d2v.models.model import Data2VecModel
from d2v.models.preprocessing.text import TextPreprocessor

from .hf_layers import HFWeights, map_hf_model, square
from .hf_preprocessing import (
    audio_preprocessing,
    hf_text_tokenizer,
    image_preprocessing,
    read_json,
    text_preprocessing,
)

log = logging.getLogger(__name__)

_MODEL_TYPES = {"data2vec-audio": "audio", "data2vec-text": "text", "data2vec-vision": "image"}
# Where task models (``...ForCTC``, ``...ForMaskedLM``, ...) keep the base model.
_BASE_PREFIXES = {"audio": "data2vec_audio.", "text": "data2vec_text.", "image": "data2vec_vision."}
# Buffers some transformers versions save with the weights; they are derived, not dropped parameters.
_DERIVED_BUFFERS = ("position_ids", "token_type_ids", "relative_position_index")
# Parameters HF may lack (mask embedding / mask token of models saved without one) keep their init.
_OPTIONAL = {"front_end.mask_embedding", "front_end.mask_token"}


@dataclass
class Dropped:
    """Tensors under one prefix of the HF weights that the converted model does not contain."""

    tensors: int
    parameters: int


@dataclass
class HFConversion:
    """What ``convert_hf`` wrote: the checkpoint, the HF class it came from, and what was left behind."""

    path: Path
    modality: str
    architecture: str
    dropped: dict[str, Dropped]  # prefix (e.g. "lm_head", "data2vec_text.pooler") -> what it held
    tokenizer: str | None = None  # where the text tokenizer came from ("tokenizer.json", "vocab.json + ...")
    notes: list[str] = field(default_factory=list)


def convert_hf(src: str | os.PathLike, out: str | os.PathLike, *, no_tokenizer: bool = False) -> HFConversion:
    """Convert ``src`` and write the checkpoint to ``out``."""
    src_dir = _resolve_source(str(src))
    hf = read_json(src_dir / "config.json")
    modality = _MODEL_TYPES.get(hf.get("model_type", ""))
    if modality is None:
        raise ConfigError(
            f"{src}: unsupported model_type {hf.get('model_type')!r}; expected one of {sorted(_MODEL_TYPES)}"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{src}: hidden_act {hf['hidden_act']!r} is not supported (only exact gelu)")
    architecture = (hf.get("architectures") or [f"{hf['model_type'].title().replace('-', '')}Model"])[0]
    prefix, base, heads = _split_base(_load_weights(src_dir), _BASE_PREFIXES[modality])
    weights = HFWeights(base)
    config, mapped = map_hf_model(modality, hf, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # what HF lacks (a mask token / embedding) gets the same init on every conversion
        model = _load_mapped(Data2VecModel(config), mapped, src)
    dropped = _dropped({**heads, **{prefix + k: v for k, v in base.items() if k not in weights.used}})

    with tempfile.TemporaryDirectory(prefix="d2v-convert-") as tmp:
        preprocessing, tokenizer_json, tokenizer_origin, notes = _preprocessing(
            modality, hf, config, src_dir, Path(tmp), no_tokenizer=no_tokenizer
        )
        source = {
            "type": "huggingface",
            "src": str(src),
            "model_type": hf["model_type"],
            "architecture": architecture,
            "dropped": {name: vars(d) for name, d in dropped.items()},
            **({"tokenizer": tokenizer_origin} if tokenizer_origin else {}),
        }
        embedding = default_embedding_config(modality, config.transformer.depth)
        path = save_checkpoint(out, model, preprocessing, embedding, tokenizer_json=tokenizer_json, source=source)
    for name, d in dropped.items():
        log.debug("%s: dropped %s (%d tensors, %d parameters)", architecture, name, d.tensors, d.parameters)
    return HFConversion(path, modality, architecture, dropped, tokenizer_origin, notes)


def _preprocessing(
    modality: str, hf: dict[str, Any], config: Any, src_dir: Path, tmp: Path, *, no_tokenizer: bool
) -> tuple[Any, Path | None, str | None, list[str]]:
    """``(preprocessing config, tokenizer.json to copy or None, where the tokenizer came from, notes)``."""
    if modality == "audio":
        return audio_preprocessing(src_dir), None, None, []
    if modality == "image":
        preprocessing, notes = image_preprocessing(src_dir, square(hf.get("image_size", 224)))
        return preprocessing, None, None, notes
    hf_text = hf_text_tokenizer(src_dir)
    preprocessing = text_preprocessing(hf_text, config.text.pad_id, config.text.max_tokens)
    if hf_text.tokenizer is None:
        if not no_tokenizer:
            raise NotFound(
                f"{src_dir} has neither tokenizer.json nor vocab.json + merges.txt "
                "(pass --no-tokenizer to convert the weights alone)"
            )
        return preprocessing, None, None, []
    _check_tokenizer(hf_text.tokenizer, preprocessing, config.text.vocab_size, src_dir)
    if hf_text.origin == TOKENIZER_FILE:  # the repo's own file, byte for byte
        return preprocessing, src_dir / TOKENIZER_FILE, hf_text.origin, hf_text.notes
    hf_text.tokenizer.save(str(tmp / TOKENIZER_FILE))
    return preprocessing, tmp / TOKENIZER_FILE, hf_text.origin, hf_text.notes


def _load_mapped(model: Data2VecModel, mapped: dict[str, Tensor], src: Any) -> Data2VecModel:
    """Load the converted tensors into ``model``: every one must be known and shaped right, none missing."""
    state = model.state_dict()
    unexpected = sorted(set(mapped) - set(state))
    if unexpected:
        raise ConfigError(f"{src}: converter produced unknown parameters {unexpected[:5]}")
    for name, tensor in mapped.items():
        if state[name].shape != tensor.shape:
            raise ConfigError(f"{src}: {name} has shape {list(tensor.shape)}, expected {list(state[name].shape)}")
    missing = sorted(set(state) - set(mapped) - _OPTIONAL)
    if missing:
        raise ConfigError(f"{src}: no weights for {missing[:5]}")
    model.load_state_dict({**state, **{k: v.to(state[k].dtype) for k, v in mapped.items()}})
    return model


def _check_tokenizer(tokenizer: Tokenizer, preprocessing: Any, vocab_size: int, src: Any) -> None:
    """Refuse here, not at serving time: RoBERTa layout (``<s> ... </s>``, pad id) and ids inside the vocab."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ConfigError(f"{src}: the tokenizer has {size} tokens, the model's embedding only {vocab_size}")
    # TextPreprocessor reconfigures the tokenizer it gets (truncation, specials): check a copy.
    TextPreprocessor(preprocessing, tokenizer=Tokenizer.from_str(tokenizer.to_str()))


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
    try:
        # Configs, tokenizer files and safetensors; the pickled weights only for repos without safetensors.
        local = Path(snapshot_download(src, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
        if not any(local.glob("*.safetensors")):
            local = Path(snapshot_download(src, allow_patterns=["pytorch_model*.bin"]))
        return local
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        raise NotFound(f"could not download {src!r} from the Hugging Face Hub ({type(exc).__name__}: {exc})") from None


def _load_weights(src: Path) -> dict[str, Tensor]:
    """All tensors of the repo, from the first layout present (safetensors preferred)."""
    from safetensors.torch import load_file

    layouts = [
        ("model.safetensors", None, load_file),
        (None, "model.safetensors.index.json", load_file),
        ("pytorch_model.bin", None, _torch_load),
        (None, "pytorch_model.bin.index.json", _torch_load),
    ]
    for single, index, load in layouts:
        if single is not None and (src / single).is_file():
            files = [src / single]
        elif index is not None and (src / index).is_file():
            weight_map = read_json(src / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConfigError(f"{src / index} has no weight_map")
            files = [src / name for name in sorted(set(weight_map.values()))]
        else:
            continue
        state: dict[str, Tensor] = {}
        for file in files:
            if not file.is_file():
                raise NotFound(f"{file} not found (listed in {index})")
            try:
                state.update(load(str(file)))
            except Exception as exc:  # corrupt or foreign files: safetensors / torch raise many types
                raise ConfigError(f"cannot read weights {file}: {type(exc).__name__}: {exc}") from None
        return state
    raise NotFound(f"{src} has no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


def _torch_load(path: str) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and containers only
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _split_base(state: dict[str, Tensor], prefix: str) -> tuple[str, dict[str, Tensor], dict[str, Tensor]]:
    """``(prefix, base model tensors without it, everything else)``; a base model saved alone has no prefix."""
    if not any(k.startswith(prefix) for k in state):
        return "", state, {}
    base = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return prefix, base, {k: v for k, v in state.items() if not k.startswith(prefix)}


def _dropped(unused: dict[str, Tensor]) -> dict[str, Dropped]:
    """Unused tensors grouped by their module (``lm_head``, ``data2vec_text.pooler``, ``tdnn``, ...)."""
    dropped: dict[str, Dropped] = {}
    for name, tensor in sorted(unused.items()):
        if name.rsplit(".", 1)[-1] in _DERIVED_BUFFERS:
            continue
        parts = name.split(".")
        group = ".".join(parts[:2] if parts[0] + "." in _BASE_PREFIXES.values() else parts[:1])
        entry = dropped.setdefault(group, Dropped(0, 0))
        entry.tensors += 1
        entry.parameters += tensor.numel()
    return dropped
