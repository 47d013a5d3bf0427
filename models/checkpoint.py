"""Project checkpoints (docs/contracts.md): a directory with ``model.safetensors`` + ``config.json``
(+ ``tokenizer.json`` for text). Written atomically (temp directory + rename); read with safetensors only,
never by unpickling."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from d2v.core.config import from_dict, to_dict
from d2v.core.errors import ConfigError, NotFound
from d2v.core.files import replace_dir
from d2v.models.config import Data2VecConfig, EmbeddingConfig
from d2v.models.preprocessing.config import PreprocessingConfig, preprocessing_from_dict, preprocessing_to_dict

FORMAT = "d2v-checkpoint"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Checkpoint:
    model: Any  # Data2VecModel, in eval mode
    config: Data2VecConfig
    preprocessing: PreprocessingConfig
    embedding: EmbeddingConfig
    path: Path
    source: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike,
    model: Any,
    preprocessing: PreprocessingConfig,
    embedding: EmbeddingConfig,
    *,
    tokenizer_json: str | os.PathLike | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a ``Data2VecModel``) and its configs to directory ``path``, replacing an existing
    checkpoint there only once the new one is complete. ``tokenizer_json`` is copied to ``tokenizer.json``."""
    from safetensors.torch import save_file

    path = Path(path)
    if model.config.modality != preprocessing.modality:
        raise ConfigError(f"preprocessing is for {preprocessing.modality}, the model for {model.config.modality}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        # safetensors needs contiguous, unshared tensors; clone() gives both.
        state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config = {
            "format": FORMAT,
            "version": VERSION,
            "model": to_dict(model.config),
            "preprocessing": preprocessing_to_dict(preprocessing),
            "embedding": to_dict(embedding),
            "source": source or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer_json is not None:
            shutil.copyfile(tokenizer_json, tmp / TOKENIZER_FILE)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of checkpoint ``path`` (format and version checked). Torch-free."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise NotFound(f"no checkpoint at {path} (missing {CONFIG_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path} is not valid JSON: {exc}") from None
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ConfigError(f"{config_path}: expected format {FORMAT!r} version {VERSION}")
    return config


def load_checkpoint(
    path: str | os.PathLike, *, attn_impl: Literal["sdpa", "math"] | None = None, device: str = "cpu"
) -> Checkpoint:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly; eval mode."""
    from safetensors.torch import load_file

    from d2v.models.model import Data2VecModel

    path = Path(path)
    raw = read_checkpoint_config(path)
    config = from_dict(Data2VecConfig, raw.get("model"), where="model")
    preprocessing = preprocessing_from_dict(raw.get("preprocessing") or {})
    embedding = from_dict(EmbeddingConfig, raw.get("embedding") or {}, where="embedding")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise NotFound(f"checkpoint {path} has no {WEIGHTS_FILE}")
    model = Data2VecModel(config, attn_impl=attn_impl)
    state = load_file(str(weights), device=device)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ConfigError(f"{weights} does not match its config: {exc}") from None
    if missing or unexpected:
        raise ConfigError(f"{weights} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(device).eval()
    return Checkpoint(model, config, preprocessing, embedding, path, raw.get("source") or {})
