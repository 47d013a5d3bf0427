"""Shared helpers for the tests that need real exports and a real ``tritonserver`` (export, server, clients).

``tests/conftest.py`` loads this module by path (as ``triton_fixtures``; ``--import-mode=importlib`` puts no
test folder on ``sys.path``) and builds the session fixtures from it: tiny project checkpoints per modality,
their exports (once per session), ONE Triton repository holding all three modalities, and a
``tritonserver`` from ``.venv-triton`` (nvidia-pytriton's binary, python backend; its own environment because
pytriton pins ``numpy<2``) on free loopback ports. Nothing here imports torch at module level.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TRITON_ENV = REPO_ROOT / ".venv-triton"
MODALITIES = ("text", "audio", "image")

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "data2vec learns contextualized targets for speech, vision and language",
    "an embedding server answers requests with vectors",
    "triton batches requests dynamically and runs python models",
] * 8


# ------------------------------------------------------------------------------------ checkpoints / exports
def make_checkpoint(modality: str, root: Path, *, version: int = 1, seed: int = 0) -> Path:
    """A tiny project checkpoint (the ``tiny`` preset; built in milliseconds)."""
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
    model = Data2VecModel(cfg).eval()
    emb = default_embedding_config(modality, cfg.transformer.depth)
    path = root / f"ckpt-{modality}-v{version}"
    save_checkpoint(path, model, pre, emb, tokenizer_json=tokenizer, source={"test": "tiny"})
    return path


def export_variants() -> list[str]:
    """The variants the shared exports carry: fp16 and int8 always, bf16 where OpenVINO reports BF16."""
    from d2v.export.variants import cpu_has_bf16

    return ["fp16", "int8", *(["bf16"] if cpu_has_bf16() else [])]


def export_all(checkpoints: dict[str, Path], store: Path) -> dict[str, Path]:
    """Export each checkpoint into ``store/tiny_<modality>`` (a model store the gateway can serve)."""
    from d2v.export.exporter import ExportOptions, export_onnx

    out = {}
    for m in MODALITIES:
        path = store / f"tiny_{m}"
        export_onnx(checkpoints[m], path, ExportOptions(name=f"tiny_{m}", variants=export_variants()))
        out[m] = path
    return out


def write_triton_repo(exports: dict[str, Path], repo: Path) -> Path:
    """One repository, all three modalities (python-backend encoders: pytriton's server has no ORT backend)."""
    from d2v.export.triton_repo import TritonRepoOptions, write_repository

    for m in MODALITIES:
        write_repository(exports[m], repo, TritonRepoOptions(preprocess_instances=1, intra_op_threads=1))
    return repo


# ------------------------------------------------------------------------------------------------ Triton
def triton_skip_reason() -> str | None:
    """Why a real tritonserver cannot run here (``None`` when it can)."""
    if not (TRITON_ENV / "bin" / "python").exists():
        return f"no Triton environment at {TRITON_ENV} (create it with scripts/setup_triton.sh)"
    if not list(TRITON_ENV.glob("lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver")):
        return f"{TRITON_ENV} has no nvidia-pytriton tritonserver binary"
    if importlib.util.find_spec("tritonclient") is None:
        return "tritonclient is not installed in the test environment"
    return None


def start_triton(repo: Path, *, models: list[str] | None = None, timeout: float = 120.0):
    """A started ``TritonServer`` on free loopback ports; ``models`` limits what it loads (explicit mode)."""
    from d2v.export.triton_launch import TritonEnv, TritonServer

    extra: tuple[str, ...] = ()
    if models:
        extra = ("--model-control-mode=explicit", *(f"--load-model={n}" for n in models))
    return TritonServer(repo, TritonEnv(TRITON_ENV), extra_args=extra).start(timeout=timeout)


# ------------------------------------------------------------------------------------------------- media
def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float, rate: int = 16_000, seed: int = 0) -> bytes:
    import soundfile as sf

    wave = np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV")
    return buf.getvalue()


def raw_inputs(modality: str) -> list[bytes]:
    """A few raw items of different lengths / sizes / sample rates (so batches are padded)."""
    if modality == "text":
        return [b"hello triton", b"data2vec embeds text, images and speech with one objective", b"a"]
    if modality == "image":
        return [png_bytes(40, 30, seed=1), png_bytes(64, 64, seed=2), png_bytes(17, 90, seed=3)]
    return [wav_bytes(0.5, 16_000, seed=1), wav_bytes(0.3, 8_000, seed=2), wav_bytes(1.1, 22_050, seed=3)]
