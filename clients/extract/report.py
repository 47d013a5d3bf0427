"""The end of a run: the manifest JSON, optional ``.npy`` exports, and a PNG of a 2-D PCA projection."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

MAX_PLOT_POINTS = 20_000


def load_model_table(model_dir: Path, columns: list[str]) -> Any:
    """All committed shards of one model as one table (shards sorted by sequence)."""
    import pyarrow as pa

    tables = [pq.read_table(p, columns=columns) for p in sorted(model_dir.glob("part-*.parquet"))]
    return pa.concat_tables(tables) if tables else None


def write_npy(out_dir: Path) -> list[str]:
    """``<model>.npy`` ([N, D] float32, rows sorted by id) and ``<model>.ids.txt`` for every model."""
    written = []
    for model_dir in sorted(p for p in (out_dir / "embeddings").iterdir() if p.is_dir()):
        table = load_model_table(model_dir, ["id", "embedding", "dims"])
        if table is None or table.num_rows == 0:
            continue
        ids = table.column("id").to_pylist()
        dims = table.column("dims")[0].as_py()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = flat.reshape(-1, dims).astype(np.float32)
        order = np.argsort(np.array(ids, dtype=object))
        np.save(out_dir / f"{model_dir.name}.npy", vectors[order])
        (out_dir / f"{model_dir.name}.ids.txt").write_text("".join(ids[i] + "\n" for i in order), encoding="utf-8")
        written.append(f"{model_dir.name}.npy")
    return written


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """Project rows onto their first two principal components (numpy SVD)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    if len(centred) < 2:
        return np.zeros((len(centred), 2), dtype=np.float32)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    proj = centred @ comps.T
    return proj if proj.shape[1] == 2 else np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))


def plot_pca(out_dir: Path, path: Path | None = None) -> Path | None:
    """One scatter panel per model, points coloured by label (folder) when labels exist; ``None`` if empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for model_dir in sorted(p for p in (out_dir / "embeddings").iterdir() if p.is_dir()):
        table = load_model_table(model_dir, ["embedding", "dims", "label"])
        if table is None or table.num_rows == 0:
            continue
        table = table.slice(0, MAX_PLOT_POINTS)
        dims = table.column("dims")[0].as_py()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        panels.append((model_dir.name, pca_2d(flat.reshape(-1, dims)), table.column("label").to_pylist()))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (name, xy, labels) in zip(axes[0], panels, strict=True):
        names = sorted({lb for lb in labels if lb is not None})
        if names:
            for lb in names + ([None] if None in labels else []):
                mask = np.array([x == lb for x in labels])
                ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.7, label=lb or "(none)")
            if len(names) <= 20:
                ax.legend(fontsize=7, markerscale=2)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7)
        ax.set_title(f"{name}: PCA of {len(xy)} embeddings")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.tight_layout()
    path = path or out_dir / "pca.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_manifest(out_dir: Path, data: dict[str, Any]) -> Path:
    """``OUT_DIR/manifest.json``, written atomically."""
    path = out_dir / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
