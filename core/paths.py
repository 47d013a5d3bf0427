"""Where the project keeps its files by default: ``$D2V_HOME`` (default ``~/.cache/d2v``).

The environment is read only inside these functions, which the CLI (and ``ServerSettings``) call when a
command runs, never at import time, so tests can point ``D2V_HOME`` anywhere with ``monkeypatch.setenv``.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "D2V_HOME"
DEFAULT_MODEL_NAMES = {"text": "d2v-text-tiny", "image": "d2v-image-tiny", "audio": "d2v-audio-tiny"}


def d2v_home() -> Path:
    """``$D2V_HOME``, or ``~/.cache/d2v`` when it is unset or empty."""
    home = os.environ.get(HOME_ENV, "").strip()
    return Path(home).expanduser() if home else Path.home() / ".cache" / "d2v"


def default_store() -> Path:
    """The default model store: ``$D2V_HOME/models`` (one ``<name>/model.json`` per model)."""
    return d2v_home() / "models"


def default_cache(*parts: str) -> Path:
    """A cache directory under ``$D2V_HOME/cache`` (e.g. converted Hugging Face checkpoints)."""
    return d2v_home().joinpath("cache", *parts)


def repo_root() -> Path:
    """The source checkout this package runs from (editable installs): holds ``data/`` and ``docs/``."""
    return Path(__file__).resolve().parent.parent


def sample_data_dir() -> Path:
    """The committed labelled sample data (``data/images``, ``data/audio``, ``data/text``)."""
    return repo_root() / "data"


def store_has_models(store: Path) -> bool:
    """True when ``store`` holds at least one exported model (``<store>/<name>/model.json``)."""
    return store.is_dir() and any(p.is_file() for p in store.glob("*/model.json"))
