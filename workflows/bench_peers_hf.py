"""The Hugging Face side of ``d2v bench peers``: random-weight data2vec models built offline at a trained
scale, the tensors HF takes, and the reference pooled embedding computed from HF's hidden states,
independently of ``d2v.models.embedding`` (top-K block outputs, each layer-normalised per token without
parameters, averaged, masked mean over real tokens). torch / transformers are imported inside the functions.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np


# ------------------------------------------------------------------------------------------- HF models
def hf_config(modality: str, size: str):
    """The HF config of one modality: the released base layouts, or test-sized ones (tiny)."""
    from transformers import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig

    tiny = size == "tiny"
    if modality == "text":
        dims = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96) if tiny else {}
        return Data2VecTextConfig(
            vocab_size=320 if tiny else 50265,
            max_position_embeddings=66 if tiny else 514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            **dims,
        )
    if modality == "audio":
        if not tiny:
            return Data2VecAudioConfig()  # the base layout (768 x 12, 7 x 512 conv, 5 pos-conv layers)
        return Data2VecAudioConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            conv_dim=(32,) * 7,
            num_conv_pos_embedding_groups=16,
            conv_pos_kernel_size=19,
            num_conv_pos_embeddings=3,
        )
    dims = (
        dict(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
        if tiny
        else {}
    )
    return Data2VecVisionConfig(
        use_shared_relative_position_bias=True,  # the pretrained layout
        use_mask_token=True,
        layer_scale_init_value=0.1,
        use_mean_pooling=False,
        **dims,
    )


def trained_scale(model, seed: int) -> None:
    """Random weights at the scales of a trained network: every matrix (not the token / position embeddings
    and convolutions) drawn from N(0, 1/fan_in), every vector (norms, biases, layer scale) perturbed by
    N(0, 0.1). HF's own init (std 0.02) leaves each block close to the identity, so the top-K layers are
    nearly equal and even averaging the wrong layers would keep cosine > 0.9999; at these scales it does not."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "embeddings" not in name and "conv" not in name:
                param.copy_(torch.randn(param.shape, generator=g) / param.shape[1] ** 0.5)
            elif param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=g) * 0.1)


def build_hf(modality: str, size: str, src: Path, seed: int):
    """A random-weight HF model (eval mode), saved with ``save_pretrained`` to ``src`` (+ tokenizer.json)."""
    import torch
    from transformers import Data2VecAudioModel, Data2VecTextModel, Data2VecVisionModel

    torch.manual_seed(seed)
    cls = {"text": Data2VecTextModel, "audio": Data2VecAudioModel, "image": Data2VecVisionModel}[modality]
    model = cls(hf_config(modality, size)).eval()
    trained_scale(model, seed + 1)
    model.save_pretrained(src)
    if modality == "text":
        from d2v.models.preprocessing import train_bpe_tokenizer
        from d2v.server.bench import sample_inputs

        corpus = [*sample_inputs("text", {}, 64), "the quick brown fox jumps over the lazy dog"] * 4
        train_bpe_tokenizer(corpus, vocab_size=300, path=src / "tokenizer.json", min_frequency=1)
    return model


def hf_feeds(modality: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    names = {"text": ("input_ids", "attention_mask"), "audio": ("input_values", "attention_mask")}
    names["image"] = ("pixel_values",)
    return {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in names[modality] if k in arrays}


# ----------------------------------------------------------------------------------- HF reference embedding
def _audio_frames(hf_cfg, samples: Any) -> Any:
    """Frames per clip after the conv feature extractor: L -> floor((L - k) / s) + 1 per layer."""
    for kernel, stride in zip(hf_cfg.conv_kernel, hf_cfg.conv_stride, strict=True):
        samples = (samples - kernel) // stride + 1
    return samples


def hf_pooled(model, modality: str, inputs: dict[str, Any], top_k: int, *, bf16: bool = False) -> np.ndarray:
    """The served pooled embedding, computed from HF hidden states (independently of ``d2v.models.embedding``):
    mean of the top-K block outputs, each layer-normed per token without parameters, then a masked mean over
    real tokens (text: every real token, <s> included; audio: real frames; image: patches, CLS excluded)."""
    import torch
    import torch.nn.functional as F

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        out = model(**inputs, output_hidden_states=True)
    blocks = out.hidden_states[1:]  # hidden_states[0] is the embedding layer's output
    top = [F.layer_norm(h.float(), h.shape[-1:]) for h in blocks[len(blocks) - top_k :]]
    average = torch.stack(top).mean(dim=0)  # [B, T, D]
    if modality == "image":
        return average[:, 1:].mean(dim=1).numpy()
    mask = inputs["attention_mask"]
    if modality == "audio":
        frames = _audio_frames(model.config, mask.sum(dim=1))
        mask = (torch.arange(average.shape[1])[None, :] < frames[:, None]).long()
    real = mask.to(average.dtype).unsqueeze(-1)
    return ((average * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)).numpy()
