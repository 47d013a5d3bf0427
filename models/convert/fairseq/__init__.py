"""``d2v convert fairseq CKPT OUT [--teacher] [--dict DIR]``: fairseq data2vec checkpoints -> project checkpoint.

Supported: data2vec 1.0 audio (``data2vec_audio``), 1.0 text (``data2vec_text``) and data2vec 2.0
(``data2vec_multi``: audio, image, text). The file is read with a restricted unpickler (``unpickle.py``: no
code from the file runs); the architecture comes from the checkpoint's own ``cfg.model`` and the served top-K
from its ``average_top_k_layers``. ``teacher=True`` converts the EMA teacher (``_ema``: the module it covers,
the rest from the student, as fairseq's teacher forward uses them) instead of the student. Text needs the
fairseq dictionary and GPT-2 BPE files (``dict.txt``, ``encoder.json``, ``vocab.bpe``; by default next to the
checkpoint): they become one ``tokenizer.json`` that yields fairseq's ids (``text_tokenizer.py``). The
checkpoint's ``source`` records the file name, its sha256, which weights (student / teacher) and what was
dropped; exports carry it into ``model.json`` and the server's ``/info``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from d2v.core.errors import ConfigError, NotFound
from d2v.models.checkpoint import save_checkpoint

from . import audio_v1, multi, text_v1
from .common import Converted, FairseqCheckpoint, read_checkpoint
from .text_tokenizer import build_tokenizer

__all__ = ["convert_fairseq", "read_checkpoint"]

SUPPORTED = ("data2vec_audio", "data2vec_text", "data2vec_multi")


def convert_fairseq(
    src: str | os.PathLike, out: str | os.PathLike, *, teacher: bool = False, dict_dir: str | os.PathLike | None = None
) -> Path:
    """Convert the fairseq checkpoint ``src`` and write the project checkpoint to ``out``; returns ``out``."""
    ckpt = read_checkpoint(src)
    where = Path(src).name
    if ckpt.name not in SUPPORTED:
        raise ConfigError(
            f"{where}: fairseq model {ckpt.name!r} is not supported (expected one of {', '.join(SUPPORTED)}; "
            "fine-tuned checkpoints: convert the pretrained one)"
        )
    state = _weights(ckpt, teacher, where)
    if ckpt.name == "data2vec_audio":
        converted = audio_v1.convert(ckpt, state, where)
    elif ckpt.name == "data2vec_text":
        converted = text_v1.convert(ckpt, state, where)
    else:
        converted = multi.convert(ckpt, state, where, multi.modality_of(ckpt, where))
    modality = converted.config.modality
    with tempfile.TemporaryDirectory(prefix="d2v-fairseq-") as tmp:
        tokenizer_json = None
        if modality == "text":
            tokenizer_json = _text_tokenizer(converted, Path(dict_dir) if dict_dir else ckpt.path.parent, Path(tmp))
        model = _build(converted, where)
        source = {
            "type": "fairseq",
            "file": ckpt.path.name,
            "sha256": ckpt.sha256,
            "fairseq_model": ckpt.name,
            "weights": "teacher" if teacher else "student",
            "has_teacher": ckpt.ema is not None,
            "dropped": converted.dropped,
            "notes": converted.notes,
        }
        return save_checkpoint(
            out, model, converted.preprocessing, converted.embedding, tokenizer_json=tokenizer_json, source=source
        )


def _weights(ckpt: FairseqCheckpoint, teacher: bool, where: str) -> dict[str, torch.Tensor]:
    """The student's tensors, or the student's with the EMA teacher's laid over them."""
    if not teacher:
        return ckpt.state
    if ckpt.ema is None:
        raise ConfigError(f"{where} has no EMA teacher (_ema); convert the student (without --teacher)")
    prefix = {"data2vec_audio": audio_v1.EMA_PREFIX, "data2vec_text": text_v1.EMA_PREFIX}.get(ckpt.name)
    if prefix is None:
        prefix = multi.ema_prefix(ckpt.model_cfg)
    overlay = {prefix + k: v for k, v in ckpt.ema.items() if not k.startswith("__")}
    unknown = sorted(k for k in overlay if k not in ckpt.state)
    if unknown:
        raise ConfigError(f"{where}: EMA teacher entries without a student counterpart: {unknown[:5]}")
    return {**ckpt.state, **overlay}


def _text_tokenizer(converted: Converted, dict_dir: Path, tmp: Path) -> Path:
    """Build ``tokenizer.json``; GPT-2 tokens missing from ``dict.txt`` get the ``<unk>`` embedding."""
    for name in ("dict.txt", "encoder.json", "vocab.bpe"):
        if not (dict_dir / name).is_file():
            raise NotFound(
                f"{dict_dir} has no {name} (text checkpoints need dict.txt, encoder.json, vocab.bpe; --dict DIR)"
            )
    tokenizer, vocab = build_tokenizer(dict_dir)
    embedding = converted.state["front_end.token_embedding.weight"]
    if embedding.shape[0] != vocab.size:
        raise ConfigError(
            f"{dict_dir / 'dict.txt'} gives {vocab.size} symbols (with <mask>), "
            f"the checkpoint embeds {embedding.shape[0]}"
        )
    if vocab.missing:
        unk = embedding[3:4].expand(len(vocab.missing), -1)
        converted.state["front_end.token_embedding.weight"] = torch.cat([embedding, unk])
        text = converted.config.text
        text.vocab_size = vocab.size + len(vocab.missing)
        converted.notes.append(
            f"{len(vocab.missing)} GPT-2 tokens absent from dict.txt (fairseq: <unk>) get ids >= {vocab.size} "
            "with the <unk> embedding"
        )
    path = tmp / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def _build(converted: Converted, where: str):
    from d2v.models.model import Data2VecModel

    model = Data2VecModel(converted.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted.state))
    unexpected = sorted(set(converted.state) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{where}: conversion left missing {missing[:5]} / unexpected {unexpected[:5]} weights")
    for name, tensor in converted.state.items():
        if tensor.shape != expected[name].shape:
            raise ConfigError(f"{where}: {name} has shape {list(tensor.shape)}, expected {list(expected[name].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.state.items()})
    return model.eval()
