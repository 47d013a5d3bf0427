"""Tiny project checkpoints for the export tests (built in milliseconds from the ``tiny`` presets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "data2vec learns contextualized targets for speech, vision and language",
    "an embedding server answers requests with vectors",
    "triton batches requests dynamically and runs python models",
] * 8


def make_checkpoint(modality: str, root: Path, *, version: int = 1, seed: int = 0) -> Path:
    import torch
    from d2v.models.checkpoint import save_checkpoint
    from d2v.models.config import default_embedding_config, preset
    from d2v.models.model import Data2VecModel
    from d2v.models.preprocessing import (
        AudioPreprocessingConfig,
        ImagePreprocessingConfig,
        TextPreprocessingConfig,
        train_bpe_tokenizer,
    )

    torch.manual_seed(seed)
    cfg = preset(modality, "tiny", version)
    tokenizer = None
    if modality == "text":
        tokenizer = root / f"{modality}-tokenizer.json"
        tok = train_bpe_tokenizer(CORPUS, vocab_size=300, path=tokenizer)
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=tok.get_vocab_size()))
        pre = TextPreprocessingConfig(max_length=cfg.text.max_tokens)
    elif modality == "audio":
        pre = AudioPreprocessingConfig(max_seconds=5.0)
    else:
        pre = ImagePreprocessingConfig(image_size=cfg.image.image_size, resize_size=cfg.image.image_size + 4)
    model = Data2VecModel.from_config(cfg).eval()
    emb = default_embedding_config(modality, cfg.transformer.depth)
    path = root / f"ckpt-{modality}-v{version}"
    save_checkpoint(path, model, pre, emb, tokenizer_json=tokenizer, source={"test": "tiny"})
    return path
