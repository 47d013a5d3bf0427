"""The end of a run: the manifest JSON, optional ``.npy`` exports, and a PNG of a 2-D PCA projection.

Everything reads the committed shards the ledger names (``ShardStore.shard_files``) through the output's
filesystem. The plot reads shards only until it has ``MAX_PLOT_POINTS`` rows; the ``.npy`` export is the one
step that holds a model's whole output, by design ([N, D] in one array).
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .fs import write_atomic
from .shards import safe_name

if TYPE_CHECKING:
    from .shards import ShardStore

MAX_PLOT_POINTS = 20_000


def _read(loc: Any, columns: list[str]) -> pa.Table:
    with loc.fs.open_input_file(loc.path) as f:
        return pq.read_table(f, columns=columns)


def load_model_table(store: ShardStore, model: str, columns: list[str], limit: int | None = None) -> pa.Table | None:
    """A model's committed shards as one table (commit order), stopping once ``limit`` rows are read."""
    tables, rows = [], 0
    for loc in store.shard_files(model):
        tables.append(_read(loc, columns))
        rows += tables[-1].num_rows
        if limit is not None and rows >= limit:
            break
    if not tables:
        return None
    table = pa.concat_tables(tables)
    return table.slice(0, limit) if limit is not None else table


def write_npy(store: ShardStore) -> list[str]:
    """``<model>.npy`` ([N, D] float32, rows sorted by id) and ``<model>.ids.txt`` for every model."""
    written = []
    for model in store.models():
        table = load_model_table(store, model, ["id", "embedding", "dims"])
        if table is None or table.num_rows == 0:
            continue
        ids = table.column("id").to_pylist()
        dims = table.column("dims")[0].as_py()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = flat.reshape(-1, dims).astype(np.float32)
        order = np.argsort(np.array(ids, dtype=object))
        buf = io.BytesIO()
        np.save(buf, vectors[order])
        name = safe_name(model)
        write_atomic(store.root.child(f"{name}.npy"), buf.getvalue())
        write_atomic(store.root.child(f"{name}.ids.txt"), "".join(ids[i] + "\n" for i in order).encode("utf-8"))
        written.append(f"{name}.npy")
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


def plot_pca(store: ShardStore, caption: str = "") -> Any:
    """One scatter panel per model (at most ``MAX_PLOT_POINTS`` points each), coloured by label when labels
    exist, the run's summary as the caption; written to ``OUT/pca.png``. ``None`` when nothing is embedded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for model in store.models():
        table = load_model_table(store, model, ["embedding", "dims", "label"], limit=MAX_PLOT_POINTS)
        if table is None or table.num_rows == 0:
            continue
        dims = table.column("dims")[0].as_py()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        panels.append((model, pca_2d(flat.reshape(-1, dims)), table.column("label").to_pylist()))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.4), squeeze=False)
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
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.05 if caption else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    loc = store.root.child("pca.png")
    write_atomic(loc, buf.getvalue())
    return loc


def write_manifest(store: ShardStore, data: dict[str, Any]) -> Any:
    """``OUT/manifest.json``, written atomically."""
    loc = store.root.child("manifest.json")
    write_atomic(loc, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return loc
