"""Fixtures for the server tests: a model store of tiny contract-following ONNX models (all three
modalities) and an in-process ASGI client. Helpers live in testkit.py (imported as ``server_testkit``)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

# --import-mode=importlib puts no test folder on sys.path: register the helper module by name.
_spec = importlib.util.spec_from_file_location("server_testkit", Path(__file__).with_name("testkit.py"))
testkit = importlib.util.module_from_spec(_spec)
sys.modules["server_testkit"] = testkit
_spec.loader.exec_module(testkit)

from d2v.server.app import create_app  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for modality in ("text", "audio", "image"):
        testkit.write_model(root, modality)
    return root


@pytest.fixture
async def client(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The real ONNX Runtime engine on all three tiny models."""
    async with testkit.asgi_client(create_app(testkit.make_settings(store))) as c:
        yield c
