"""``training.png``: loss, target std, prediction std, lr and tau over steps, from a run's ``metrics.jsonl``.

Written at the end of ``d2v train`` and on demand by ``d2v train plot RUN_DIR``. Uses matplotlib's Agg
backend (no display needed); imports matplotlib lazily.
"""

from __future__ import annotations

from pathlib import Path

from d2v.core.errors import NotFound

from .metrics import METRICS_FILE, read_metrics

PANELS = (
    ("loss", "loss", "log"),
    ("target_std", "target std", "linear"),
    ("pred_std", "prediction std", "linear"),
    ("lr", "learning rate", "linear"),
    ("tau", "EMA decay tau", "linear"),
)
PLOT_FILE = "training.png"


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the five curves of ``run_dir/metrics.jsonl`` into ``out`` (default ``run_dir/training.png``)."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise NotFound(f"no {METRICS_FILE} in {run_dir} (is it a d2v train run directory?)")
    records = [r for r in read_metrics(metrics) if "loss" in r]
    if not records:
        raise NotFound(f"{metrics} holds no training records yet")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 2.2 * len(PANELS)), sharex=True)
    for ax, (key, title, scale) in zip(axes, PANELS, strict=True):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2)
            if scale == "log" and min(values) > 0:
                ax.set_yscale("log")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(f"data2vec training: {run_dir.name}")
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / PLOT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
