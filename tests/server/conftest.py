"""Fixtures for the server tests: an in-process ASGI client over the shared tiny model store (``store``, from
tests/conftest.py; helpers in tests/testkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from testkit import asgi_client, make_settings

from d2v.server.app import create_app


@pytest.fixture
async def client(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The real ONNX Runtime engine on all three tiny models."""
    async with asgi_client(create_app(make_settings(store))) as c:
        yield c
