"""Tiny configs and padded batches shared by the model tests (everything builds in milliseconds)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from d2v.models.config import preset
from d2v.models.model import Data2VecModel

MODALITIES = ("audio", "image", "text")


def make_tiny_model(modality: str, version: int = 1, seed: int = 0, **transformer_overrides) -> Data2VecModel:
    torch.manual_seed(seed)
    cfg = preset(modality, "tiny", version)
    if transformer_overrides:
        cfg = dataclasses.replace(cfg, transformer=dataclasses.replace(cfg.transformer, **transformer_overrides))
    return Data2VecModel(cfg).eval()


def make_tiny_batch(modality: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, attention_mask 1 = real) with odd, unequal lengths; images are never padded."""
    g = torch.Generator().manual_seed(seed)
    if modality == "audio":
        lengths = [4001, 3377, 2203]
        x = torch.randn(3, max(lengths), generator=g)
    elif modality == "text":
        lengths = [11, 7, 4]
        x = torch.randint(4, 128, (3, max(lengths)), generator=g)
    else:
        return torch.randn(3, 3, 32, 32, generator=g), None
    attention_mask = (torch.arange(x.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
    if modality == "text":
        x = x.masked_fill(attention_mask == 0, 1)  # <pad>
    else:
        x = x * attention_mask  # zero-padded waveforms
    return x, attention_mask


@pytest.fixture(params=MODALITIES)
def modality(request) -> str:
    return request.param


# Test modules are imported in importlib mode (no sys.path entry), so the helpers travel as fixtures.
@pytest.fixture
def tiny_model():
    return make_tiny_model


@pytest.fixture
def tiny_batch():
    return make_tiny_batch
