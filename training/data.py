"""Pretraining data: datasets, sampling and collate functions for audio, images and text (files come from
``sources``).

Decoding and normalisation go through the shared torch-free preprocessing (``d2v.models.preprocessing``);
this module adds only what training needs on top: random crops / flips, equal-length audio batches, text
blocks, masks, and a deterministic sampler.

Determinism: the sampler yields sample keys ``(epoch, index)``; every random draw of a sample (crop offset,
flip, masks) is seeded from ``(seed, epoch, index)`` (``d2v.training.sample_randomness``), so batches do
not depend on the number of processes, the number of DataLoader workers or a resume. Rank ``r`` of ``W``
takes every W-th sample of the epoch permutation, so the union of the ranks' micro-batch ``i`` is the single-process
batch ``i`` of size ``W * batch_size``.

Robustness: an unreadable or corrupt file is logged once (with the reason), counted, and replaced by the
next readable sample of the dataset, so batch shapes (and DDP) are never disturbed and an epoch never
crashes. Each batch reports how many files it skipped (``batch["skipped"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from d2v.core.errors import ConfigError, D2VError, NotFound
from d2v.models.preprocessing import (
    AudioPreprocessor,
    ImagePreprocessor,
    TextPreprocessor,
    hflip,
    random_resized_crop,
)

from .sample_randomness import CROP, FLIP, MaskMaker, sample_rng
from .sources import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, list_media_files, read_texts

log = logging.getLogger(__name__)

MAX_SKIP_TRIES = 64  # consecutive unreadable samples before giving up on a batch slot

Key = tuple[int, int]  # (epoch, index)


# -------------------------------------------------------------------------------------------- sampling


class ShardedSampler(Sampler[Key]):
    """An endless, deterministic stream of sample keys for one rank, resumable at a micro-batch.

    Epoch ``e`` is ``randperm(n)`` seeded with ``seed + e`` (or ``range(n)``), truncated to a multiple of
    ``batch_size * world_size`` (the "drop last" of DDP); rank ``r`` takes positions ``r, r + W, ...``.

    Args:
        num_samples: dataset size.
        batch_size: micro-batch size per rank.
        rank / world_size: this process's shard.
        seed: permutation seed.
        shuffle: permute each epoch.
        start_batch: micro-batches already consumed (resume position).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_batch: int = 0,
    ) -> None:
        self.n = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.start_batch = start_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: {num_samples} samples are fewer than one global micro-batch "
                f"(batch_size {batch_size} x {world_size} processes)"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        usable = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Key]:
        epoch, batch = divmod(self.start_batch, self.batches_per_epoch)
        offset = batch * self.batch_size
        while True:
            for index in self.epoch_order(epoch)[offset:]:
                yield (epoch, index)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62


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
    """Image files -> RGB -> random resized crop + flip (training) or resize + centre crop (evaluation)."""

    def __init__(
        self,
        files: list[Path],
        pre: ImagePreprocessor,
        *,
        seed: int,
        train: bool = True,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip: bool = True,
    ):
        super().__init__(len(files))
        self.files, self.pre, self.seed = files, pre, seed
        self.train, self.crop_scale, self.flip = train, tuple(crop_scale), flip

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def load(self, key: Key) -> np.ndarray:
        epoch, index = key
        img = self.pre.open(self.files[index])
        if not self.train:
            return self.pre.to_model_input(self.pre.eval_geometry(img))
        rng = sample_rng(self.seed, epoch, index, CROP)
        img = random_resized_crop(
            img, self.pre.image_size, rng, scale=self.crop_scale, interpolation=self.pre.cfg.interpolation
        )
        if self.flip and sample_rng(self.seed, epoch, index, FLIP).random() < 0.5:
            img = hflip(img)
        return self.pre.to_model_input(img)


class TextBlockDataset(_SkippingDataset):
    """Fixed-size token blocks ``<s> t1 ... t_{N-1}`` cut from the concatenated documents (``... </s>`` each)."""

    def __init__(self, blocks: np.ndarray):
        super().__init__(len(blocks))
        self.blocks = blocks

    def load(self, key: Key) -> np.ndarray:
        return self.blocks[key[1]]


def make_text_blocks(docs: list[str], pre: TextPreprocessor, block_size: int) -> np.ndarray:
    """Tokenise ``docs`` (each ``<s> ... </s>``), concatenate without the ``<s>``, cut into blocks of
    ``block_size - 1`` and prepend ``<s>`` to each (RoBERTa ``sample_break_mode=none`` style). int64 [N, block]."""
    stream: list[int] = []
    for doc in docs:
        stream.extend(pre.tokenize_document(doc)[1:])
    body = block_size - 1
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
    for text ``student_ids`` [B * M, T] (with ``<mask>`` tokens for the v1 text maskers).
    """

    modality: str
    masks: MaskMaker
    seed: int
    conv_layers: tuple[tuple[int, int, int], ...] = ()
    num_patches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

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
            ids = torch.from_numpy(np.stack([item.value for item in items]))
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
    dataset: Dataset, sampler: ShardedSampler, collate: Collator, *, num_workers: int, seed: int, rank: int
) -> DataLoader:
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
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
    dataset: Dataset
    collate: Collator
    tokens_per_sample: int  # nominal: frames at max crop / patches / block size (for tokens/s)


def build_training_data(cfg, pre, masks: MaskMaker, model_cfg, docs: list[str] | None = None) -> TrainingData:
    """The dataset and collate function of ``cfg.modality`` (``cfg``: ``TrainConfig``; ``model_cfg``:
    ``Data2VecConfig``; ``pre``: the modality's preprocessor; ``docs``: the text corpus, already read)."""
    seed, data = cfg.run.seed, cfg.data
    if cfg.modality == "audio":
        files = list_media_files(data.path, AUDIO_EXTENSIONS, "audio")
        rate = pre.sample_rate
        max_samples = int(data.max_seconds * rate)
        dataset = AudioDataset(
            files, pre, max_samples=max_samples, min_samples=max(int(data.min_seconds * rate), 400), seed=seed
        )
        conv = tuple(tuple(c) for c in model_cfg.audio.conv_layers)
        return TrainingData(
            dataset, Collator("audio", masks, seed, conv_layers=conv), conv_output_length(max_samples, conv)
        )
    if cfg.modality == "image":
        files = list_media_files(data.path, IMAGE_EXTENSIONS, "image")
        dataset = ImageDataset(files, pre, seed=seed, train=True, crop_scale=data.crop_scale, flip=data.hflip)
        patches = model_cfg.image.grid_size**2
        return TrainingData(dataset, Collator("image", masks, seed, num_patches=patches), patches)
    blocks = make_text_blocks(
        docs if docs is not None else read_texts(data.path, data.text_field), pre, data.block_size
    )
    return TrainingData(TextBlockDataset(blocks), Collator("text", masks, seed), data.block_size)
