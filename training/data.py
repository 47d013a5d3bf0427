"""Pretraining data: datasets and collate functions for audio, images and text (files come from ``sources``,
the order of samples from ``samplers``).

Decoding and normalisation go through the shared torch-free preprocessing (``d2v.models.preprocessing``);
this module adds only what training needs on top: random crops / flips / colour jitter, equal-length audio
batches, text blocks, masks.

Determinism: every random draw of a sample (crop offset, flip, jitter, masks) is seeded from
``(seed, epoch, index)`` (``d2v.training.sample_randomness``), so it does not depend on the number of
processes, the number of DataLoader workers or a resume. (Two things depend on the batch a sample lands in,
as in fairseq: the audio crop to the batch's shortest clip and the v1 span masks' equal-count cut.)

Robustness: an unreadable or corrupt file is logged once (with the reason), counted, and replaced by the
next readable sample of the dataset, so batch shapes (and DDP) are never disturbed and an epoch never
crashes. Each batch reports how many files it skipped (``batch["skipped"]``). With length-grouped batches,
audio headers are read up front and unreadable or too-short files are left out of the batches (and counted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from d2v.core.errors import D2VError, NotFound
from d2v.models.preprocessing import (
    AudioPreprocessor,
    ImagePreprocessor,
    TextPreprocessor,
    hflip,
    random_resized_crop,
)

from .augment import color_jitter
from .sample_randomness import CROP, FLIP, JITTER, MaskMaker, sample_rng
from .samplers import Key, LengthGroupedBatchSampler, ShardedSampler
from .sources import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, audio_lengths, list_media_files, read_texts

log = logging.getLogger(__name__)

MAX_SKIP_TRIES = 64  # consecutive unreadable samples before giving up on a batch slot

# -------------------------------------------------------------------------------------------- datasets


@dataclass
class Loaded:
    key: Key  # the key actually loaded (a replacement when the requested sample was unreadable)
    value: Any
    skipped: int = 0


class _SkippingDataset(Dataset):
    """Loads ``key``; on a decoding error logs the reason once, counts it, and tries the next index."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._bad: set[int] = set()

    def load(self, key: Key) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return str(index)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: Key) -> Loaded:
        epoch, index = key
        skipped = 0
        for attempt in range(MAX_SKIP_TRIES):
            candidate = (index + attempt) % self.size
            if candidate in self._bad:
                skipped += 1
                continue
            try:
                return Loaded((epoch, candidate), self.load((epoch, candidate)), skipped)
            except (D2VError, OSError, ValueError, RuntimeError, EOFError) as exc:
                self._bad.add(candidate)
                skipped += 1
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                log.warning("skipping unreadable sample %s: %s", self.describe(candidate), reason)
        raise NotFound(f"data.path: {MAX_SKIP_TRIES} consecutive unreadable samples near {self.describe(index)}")


class AudioDataset(_SkippingDataset):
    """Audio files -> normalised mono float32 at the preprocessing sample rate, randomly cropped.

    The whole utterance is normalised, then cropped (fairseq ``RawAudioDataset``: postprocess, then crop in
    the collater); ``max_samples`` caps the crop here, the collater crops the batch to its shortest clip.
    """

    def __init__(self, files: list[Path], pre: AudioPreprocessor, *, max_samples: int, min_samples: int, seed: int):
        super().__init__(len(files))
        self.files, self.pre, self.seed = files, pre, seed
        self.max_samples, self.min_samples = max_samples, min_samples

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def load(self, key: Key) -> np.ndarray:
        epoch, index = key
        wave = self.pre.load_item(self.files[index])
        if wave.shape[0] < self.min_samples:
            raise ValueError(f"too short ({wave.shape[0]} samples < data.min_seconds)")
        if wave.shape[0] > self.max_samples:
            rng = sample_rng(self.seed, epoch, index, CROP)
            start = int(rng.integers(0, wave.shape[0] - self.max_samples + 1))
            wave = wave[start : start + self.max_samples]
        return wave


class ImageDataset(_SkippingDataset):
    """Image files -> RGB -> [colour jitter] + random resized crop + flip (training) or resize + centre crop
    (evaluation). The jitter sees the whole image, before the crop (data2vec_vision ``DataAugmentationForBEiT``)."""

    def __init__(
        self,
        files: list[Path],
        pre: ImagePreprocessor,
        *,
        seed: int,
        train: bool = True,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip: bool = True,
        jitter: float = 0.0,
    ):
        super().__init__(len(files))
        self.files, self.pre, self.seed = files, pre, seed
        self.train, self.crop_scale, self.flip, self.jitter = train, tuple(crop_scale), flip, jitter

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def load(self, key: Key) -> np.ndarray:
        epoch, index = key
        img = self.pre.open(self.files[index])
        if not self.train:
            return self.pre.to_model_input(self.pre.eval_geometry(img))
        if self.jitter:
            img = color_jitter(img, self.jitter, sample_rng(self.seed, epoch, index, JITTER))
        rng = sample_rng(self.seed, epoch, index, CROP)
        img = random_resized_crop(
            img, self.pre.image_size, rng, scale=self.crop_scale, interpolation=self.pre.cfg.interpolation
        )
        if self.flip and sample_rng(self.seed, epoch, index, FLIP).random() < 0.5:
            img = hflip(img)
        return self.pre.to_model_input(img)


class TextBlockDataset(_SkippingDataset):
    """Token blocks ``<s> t1 ... t_n``: equal-length rows of an array, or a list of 1-D arrays (``complete_doc``)."""

    def __init__(self, blocks: np.ndarray | list[np.ndarray]):
        super().__init__(len(blocks))
        self.blocks = blocks

    def load(self, key: Key) -> np.ndarray:
        return self.blocks[key[1]]


def make_text_blocks(
    docs: list[str], pre: TextPreprocessor, block_size: int, mode: str = "none"
) -> np.ndarray | list[np.ndarray]:
    """Token blocks of at most ``block_size`` tokens, each ``<s>`` + ``block_size - 1`` body tokens (fairseq
    ``TokenBlockDataset(tokens_per_sample - 1)`` then ``PrependTokenDataset(<s>)``). Every document is
    tokenised ``<s> ... </s>`` and its ``<s>`` dropped.

    ``mode="none"``: the documents concatenated and cut into full blocks, the tail dropped -> int64
    ``[N, block_size]``. ``mode="complete_doc"``: blocks never cross a document: each document is cut into
    consecutive pieces of ``block_size - 1`` (its last piece shorter) -> a list of int64 arrays. fairseq fills
    a ``complete_doc`` block with whole sentences of one document; corpora here carry no sentence boundaries,
    so a document longer than a block is cut at the block length.
    """
    body = block_size - 1
    bos = np.asarray([pre.bos_id], dtype=np.int64)
    if mode == "complete_doc":
        blocks = []
        for doc in docs:
            tokens = np.asarray(pre.tokenize_document(doc)[1:], dtype=np.int64)
            blocks.extend(np.concatenate([bos, tokens[i : i + body]]) for i in range(0, len(tokens), body))
        if not blocks:
            raise NotFound("data.path: the corpus has no tokens")
        return blocks
    stream: list[int] = []
    for doc in docs:
        stream.extend(pre.tokenize_document(doc)[1:])
    n = len(stream) // body
    if n == 0:
        raise NotFound(f"data.path: the corpus has {len(stream)} tokens, fewer than one block ({block_size})")
    tokens = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    return np.concatenate([np.full((n, 1), pre.bos_id, dtype=np.int64), tokens], axis=1)


# -------------------------------------------------------------------------------------------- collate


def conv_output_length(num_samples: int, conv_layers: tuple[tuple[int, int, int], ...]) -> int:
    """Frames produced by the audio CNN (no padding): ``floor((L - k) / s) + 1`` per layer."""
    length = num_samples
    for _, kernel, stride in conv_layers:
        length = (length - kernel) // stride + 1
    return max(0, length)


@dataclass
class Collator:
    """Batches ``Loaded`` items of one modality and adds the masks.

    Output keys: the model input (``input_values`` / ``pixel_values`` / ``input_ids``), ``keys`` int64 [B, 2]
    (epoch, index), ``mask`` bool [B * M, T] (True = masked), ``skipped`` (files skipped for this batch), and
    for text ``student_ids`` [B * M, T] (with ``<mask>`` tokens for the v1 text maskers). Text blocks of
    different lengths (``complete_doc``) are right-padded with ``pad_id`` (fairseq pads in the collater too).
    """

    modality: str
    masks: MaskMaker
    seed: int
    conv_layers: tuple[tuple[int, int, int], ...] = ()
    num_patches: int = 0
    pad_id: int = 1

    def __call__(self, items: list[Loaded]) -> dict[str, Any]:
        keys = [item.key for item in items]
        batch: dict[str, Any] = {
            "keys": torch.tensor(keys, dtype=torch.int64),
            "skipped": sum(item.skipped for item in items),
        }
        if self.modality == "audio":
            # Crop every clip to the shortest one (random offset per clip): no padding, so instance norm over
            # time never sees padded frames (spec §8.6).
            length = min(item.value.shape[0] for item in items)
            rows = []
            for item in items:
                wave, excess = item.value, item.value.shape[0] - length
                start = int(sample_rng(self.seed, *item.key, CROP + 100).integers(0, excess + 1)) if excess else 0
                rows.append(wave[start : start + length])
            batch["input_values"] = torch.from_numpy(np.stack(rows))
            batch["mask"] = self.masks.token_masks(keys, conv_output_length(length, self.conv_layers))
        elif self.modality == "image":
            batch["pixel_values"] = torch.from_numpy(np.stack([item.value for item in items]))
            batch["mask"] = self.masks.token_masks(keys, self.num_patches)
        else:
            longest = max(len(item.value) for item in items)
            ids = torch.full((len(items), longest), self.pad_id, dtype=torch.int64)
            for row, item in enumerate(items):
                ids[row, : len(item.value)] = torch.from_numpy(np.asarray(item.value, dtype=np.int64))
            batch["input_ids"] = ids
            batch["student_ids"], batch["mask"] = self.masks.text_masks(keys, ids)
        return batch


def _seed_worker(worker_id: int) -> None:
    """Seed the worker's global RNGs from its (deterministic) torch seed; samples use keyed streams anyway."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


def build_loader(
    dataset: Dataset,
    sampler: ShardedSampler | LengthGroupedBatchSampler,
    collate: Collator,
    *,
    num_workers: int,
    seed: int,
    rank: int,
) -> DataLoader:
    """A loader over ``sampler``'s stream: ``ShardedSampler`` keys batched by ``batch_size``, or the whole
    micro-batches of a ``LengthGroupedBatchSampler``."""
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    if isinstance(sampler, LengthGroupedBatchSampler):
        batching: dict[str, Any] = {"batch_sampler": sampler}
    else:
        batching = {"batch_size": sampler.batch_size, "sampler": sampler}
    return DataLoader(
        dataset,
        **batching,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        generator=g,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
    )


# ------------------------------------------------------------------------------------------- assembly


@dataclass
class TrainingData:
    """A modality's dataset and collate function. ``sizes``: each item's length in input units (audio samples
    of its crop, text tokens of its block), the input of length-grouped batching; None where items all have
    the same size. ``excluded``: files left out up front (unreadable headers, too short)."""

    dataset: Dataset
    collate: Collator
    tokens_per_sample: int  # nominal: frames at max crop / patches / block size (for tokens/s)
    sizes: list[int] | None = None
    excluded: int = 0


def _audio_data(cfg, pre, masks: MaskMaker, model_cfg) -> TrainingData:
    """Audio clips; with ``data.max_tokens``, lengths are read from the headers (clips shorter than
    ``data.min_seconds`` or unreadable are left out, as fairseq's manifest loading drops short clips)."""
    seed, data = cfg.run.seed, cfg.data
    files = list_media_files(data.path, AUDIO_EXTENSIONS, "audio")
    rate = pre.sample_rate
    max_samples = int(data.max_seconds * rate)
    min_samples = max(int(data.min_seconds * rate), 400)
    sizes, excluded = None, 0
    if data.max_tokens:
        lengths = audio_lengths(files, rate, threads=max(1, data.num_workers))
        kept = [(f, n) for f, n in zip(files, lengths, strict=True) if n is not None and n >= min_samples]
        excluded = len(files) - len(kept)
        if excluded:
            log.info("%d of %d audio files left out (unreadable or below data.min_seconds)", excluded, len(files))
        if not kept:
            raise NotFound(f"data.path: no readable audio file of at least data.min_seconds in {data.path}")
        files, sizes = [f for f, _ in kept], [min(n, max_samples) for _, n in kept]
    dataset = AudioDataset(files, pre, max_samples=max_samples, min_samples=min_samples, seed=seed)
    conv = tuple(tuple(c) for c in model_cfg.audio.conv_layers)
    collate = Collator("audio", masks, seed, conv_layers=conv)
    return TrainingData(dataset, collate, conv_output_length(max_samples, conv), sizes, excluded)


def build_training_data(cfg, pre, masks: MaskMaker, model_cfg, docs: list[str] | None = None) -> TrainingData:
    """The dataset and collate function of ``cfg.modality`` (``cfg``: ``TrainConfig``; ``model_cfg``:
    ``Data2VecConfig``; ``pre``: the modality's preprocessor; ``docs``: the text corpus, already read)."""
    seed, data = cfg.run.seed, cfg.data
    if cfg.modality == "audio":
        return _audio_data(cfg, pre, masks, model_cfg)
    if cfg.modality == "image":
        files = list_media_files(data.path, IMAGE_EXTENSIONS, "image")
        dataset = ImageDataset(
            files, pre, seed=seed, train=True, crop_scale=data.crop_scale, flip=data.hflip, jitter=data.color_jitter
        )
        patches = model_cfg.image.grid_size**2
        return TrainingData(dataset, Collator("image", masks, seed, num_patches=patches), patches)
    docs = docs if docs is not None else read_texts(data.path, data.text_field)
    blocks = make_text_blocks(docs, pre, data.block_size, data.text_blocks)
    sizes = [len(block) for block in blocks] if data.max_tokens else None
    collate = Collator("text", masks, seed, pad_id=pre.pad_id)
    return TrainingData(TextBlockDataset(blocks), collate, data.block_size, sizes)
