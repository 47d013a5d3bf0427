"""Fixtures for the export tests. The tiny checkpoints, their exports, the Triton repository and the real
``tritonserver`` are session fixtures of ``tests/conftest.py`` (shared with the server and client tests, so
everything is exported and started once per session); here they keep their short names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The test modules do ``from conftest import MODALITIES``: make this folder importable.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

MODALITIES = sys.modules["triton_fixtures"].MODALITIES  # registered by tests/conftest.py


@pytest.fixture(scope="session")
def checkpoints(tiny_checkpoints):
    return tiny_checkpoints


@pytest.fixture(scope="session")
def exports(tiny_exports):
    return tiny_exports
