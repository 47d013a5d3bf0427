"""``d2v probe``: a linear probe on frozen, layer-averaged, pooled embeddings of a checkpoint.

The embeddings are exactly what the server returns: inputs go through the checkpoint's preprocessing
(``d2v.models.preprocessing.build_preprocessor``), the model through ``d2v.models.embedding.extract_embeddings``
with the checkpoint's ``EmbeddingConfig`` (top-K block outputs, parameter-free layer norm, mean or CLS pooling).
A scikit-learn logistic regression is fit on the train split and scored on the test split. ``--random-init``
builds the same architecture untrained (same preprocessing), the baseline pretraining must beat.

Labelled sets: a directory tree ``LABEL/FILE`` (images, audio, or ``.txt`` documents), a directory with a
``manifest.csv`` / ``manifest.jsonl``, or a CSV / JSONL file of ``{path|text, label[, split]}`` records
(paths relative to the file). Without splits, a stratified ``test_fraction`` is held out.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d2v.core.contract import PRIMARY_INPUT
from d2v.core.errors import ConfigError, D2VError, NotFound

from .sources import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

EXTENSIONS = {"audio": AUDIO_EXTENSIONS, "image": IMAGE_EXTENSIONS, "text": (".txt",)}


@dataclass
class Example:
    raw: Any  # a path, or the text itself
    label: str
    split: str | None = None


def read_labelled(path: str | Path, modality: str) -> list[Example]:
    """Examples of a labelled set (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"--data: not found: {path}")
    if path.is_dir():
        for name in ("manifest.jsonl", "manifest.csv"):
            if (path / name).is_file():
                return read_labelled(path / name, modality)
        examples = []
        for label_dir in sorted(p for p in path.iterdir() if p.is_dir()):
            for file in sorted(label_dir.rglob("*")):
                if file.is_file() and file.suffix.lower() in EXTENSIONS[modality]:
                    raw = file.read_text(encoding="utf-8", errors="replace") if modality == "text" else file
                    examples.append(Example(raw, label_dir.name))
    elif path.suffix.lower() in (".jsonl", ".json"):
        examples = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "label" not in record or not ("text" in record or "path" in record):
                raise ConfigError(f"--data: {path}:{n}: expected {{text|path, label[, split]}}")
            raw = record["text"] if "text" in record else path.parent / record["path"]
            examples.append(Example(raw, str(record["label"]), record.get("split")))
    elif path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"label"} <= set(rows[0]) or rows and not ({"path", "text"} & set(rows[0])):
            raise ConfigError(f"--data: {path}: expected columns path|text, label[, split]")
        examples = [
            Example(r["text"] if "text" in r else path.parent / r["path"], r["label"], r.get("split") or None)
            for r in rows
        ]
    else:
        raise ConfigError(f"--data: {path}: expected a directory, a .jsonl or a .csv file")
    if not examples:
        raise NotFound(f"--data: no labelled {modality} examples found in {path}")
    return examples


def load_encoder(checkpoint: str | Path | None, *, random_init: bool, config: str | None, seed: int):
    """``(model, preprocessor, embedding config)`` of a checkpoint, optionally re-initialised."""
    from d2v.models.checkpoint import load_checkpoint
    from d2v.models.model import Data2VecModel
    from d2v.models.preprocessing import build_preprocessor

    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        model, model_cfg, pre_cfg, emb_cfg, base_dir = (
            ckpt.model,
            ckpt.config,
            ckpt.preprocessing,
            ckpt.embedding,
            ckpt.path,
        )
    elif random_init and config:
        from d2v.models.config import default_embedding_config

        from .config import load_config, resolve_model_config, resolve_preprocessing_config

        cfg = load_config(config)
        if cfg.modality == "text":
            raise ConfigError("--random-init for text needs a checkpoint (its tokenizer defines the vocabulary)")
        model_cfg = resolve_model_config(cfg)
        pre_cfg = resolve_preprocessing_config(cfg, model_cfg)
        emb_cfg, base_dir, model = default_embedding_config(cfg.modality, model_cfg.transformer.depth), None, None
    else:
        raise ConfigError("d2v probe: give a checkpoint directory (or --random-init --config RECIPE)")
    if random_init:
        torch.manual_seed(seed)
        model = Data2VecModel(model_cfg)
    return model.eval(), build_preprocessor(pre_cfg, base_dir), emb_cfg


@torch.no_grad()
def embed(model, pre, examples: list[Example], emb_cfg, *, batch_size: int = 16, pooling: str = "mean"):
    """Pooled embeddings ``[N, D]`` and the kept example indices (unreadable inputs are skipped and logged)."""
    from d2v.models.embedding import extract_embeddings

    items, kept = [], []
    for i, ex in enumerate(examples):
        try:
            items.append(pre.load_item(ex.raw))
            kept.append(i)
        except D2VError as exc:
            log.warning("skipping %s: %s", ex.raw if not isinstance(ex.raw, str) else f"text #{i}", exc.message)
    if not items:
        raise NotFound("--data: no readable examples")
    key = PRIMARY_INPUT[model.modality]
    vectors = []
    for start in range(0, len(items), batch_size):
        arrays = pre.collate(items[start : start + batch_size])
        inputs = torch.from_numpy(arrays[key])
        mask = torch.from_numpy(arrays["attention_mask"]) if "attention_mask" in arrays else None
        out = extract_embeddings(model, inputs, mask, emb_cfg)
        pooled = out.cls if pooling == "cls" and out.cls is not None else out.mean
        vectors.append(pooled.float().numpy())
    return np.concatenate(vectors), kept


def split_indices(examples: list[Example], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    splits = [(ex.split or "").lower() for ex in examples]
    if any(splits):
        train = np.array([i for i, s in enumerate(splits) if s in ("train", "training")])
        test = np.array([i for i, s in enumerate(splits) if s in ("test", "valid", "validation", "dev", "eval")])
        if len(train) and len(test):
            return train, test
    from sklearn.model_selection import train_test_split

    labels = [ex.label for ex in examples]
    idx = np.arange(len(examples))
    counts = {label: labels.count(label) for label in set(labels)}
    stratify = labels if min(counts.values()) >= 2 and len(counts) <= len(idx) * test_fraction else None
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def linear_probe(features: np.ndarray, labels: list[str], train: np.ndarray, test: np.ndarray, seed: int = 0) -> dict:
    """Standardise, fit a logistic regression on ``train``, report accuracies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    if len(set(y[train])) < 2:
        raise ConfigError("--data: the train split needs at least two labels")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    clf.fit(features[train], y[train])
    majority = max(set(y[train]), key=list(y[train]).count)
    return {
        "train_accuracy": float(clf.score(features[train], y[train])),
        "test_accuracy": float(clf.score(features[test], y[test])),
        "majority_baseline": float(np.mean(y[test] == majority)),
        "num_train": int(len(train)),
        "num_test": int(len(test)),
        "num_classes": int(len(set(y))),
        "dim": int(features.shape[1]),
    }


def run_probe(
    checkpoint: str | Path | None,
    data: str | Path,
    *,
    random_init: bool = False,
    config: str | None = None,
    top_k: int | None = None,
    pooling: str | None = None,
    batch_size: int = 16,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> dict:
    model, pre, emb_cfg = load_encoder(checkpoint, random_init=random_init, config=config, seed=seed)
    if top_k is not None:
        if not 1 <= top_k <= model.num_layers:
            raise ConfigError(f"--top-k must be in [1, {model.num_layers}], got {top_k}")
        emb_cfg.top_k = top_k
    pooling = pooling or emb_cfg.pooling
    examples = read_labelled(data, model.modality)
    total = len(examples)
    features, kept = embed(model, pre, examples, emb_cfg, batch_size=batch_size, pooling=pooling)
    examples = [examples[i] for i in kept]
    train, test = split_indices(examples, test_fraction, seed)
    report = linear_probe(features, [ex.label for ex in examples], train, test, seed)
    report.update(
        checkpoint=str(checkpoint) if checkpoint else None,
        random_init=random_init,
        modality=model.modality,
        top_k=emb_cfg.top_k,
        pooling=pooling,
        skipped=total - len(examples),
    )
    return report


def run_probe_cli(args) -> int:
    report = run_probe(
        args.checkpoint,
        args.data,
        random_init=args.random_init,
        config=args.config,
        top_k=args.top_k,
        pooling=args.pooling,
        batch_size=args.batch_size,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    what = "random init" if report["random_init"] else "pretrained"
    print(
        f"{report['modality']} linear probe ({what}, top-{report['top_k']} {report['pooling']}, dim {report['dim']}): "
        f"test accuracy {report['test_accuracy']:.4f} (train {report['train_accuracy']:.4f}, majority "
        f"{report['majority_baseline']:.4f}; {report['num_train']} train / {report['num_test']} test, "
        f"{report['num_classes']} classes, {report['skipped']} skipped)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
