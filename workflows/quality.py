"""Quality report: linear probes of the default tiny models vs random initialisation vs a trivial baseline.

``d2v quality-report`` pretrains the three default models with the quickstart recipes (the exact pipeline
of ``d2v quickstart``, into a temporary store unless ``--store`` names an existing one), then fits one
linear probe per feature set on the train split of the committed sample data (``data/README.md``) and
scores it on the held-out test split:

* ``pretrained``: the pooled, layer-averaged embedding of the pretrained checkpoint (mean of the top-K
  block outputs, each layer-normed, averaged over tokens: what the server returns);
* ``random init``: the same architecture, configuration and seed before any training step (the weights
  pretraining started from), embedded the same way;
* ``baseline``: raw pixels (images), simple waveform statistics (audio: duration, RMS, zero-crossing
  rate, log-energy bands), a bag of tokens (text, with the model's own tokenizer).

The probe is ``d2v probe``'s (``d2v.training.probe``: ``StandardScaler`` + ``LogisticRegression``, L2,
``C=1``, fixed seed); the baselines go through the same ``linear_probe``, so a report is reproducible.
Results go to ``docs/quality.md`` (between generated markers; the tuning log below them survives) and
``docs/quality.png``.

Heavy imports (torch, sklearn, matplotlib) happen inside the functions.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from d2v.core.contract import MODALITIES
from d2v.core.errors import ConfigError, NotFound
from d2v.core.paths import DEFAULT_MODEL_NAMES
from d2v.workflows.options import QuickstartOptions
from d2v.workflows.quickstart import QUICKSTART_FILE, build_models
from d2v.workflows.sample_data import LabelledSet, load_labelled, probe_data_path

log = logging.getLogger(__name__)

FEATURES = ("pretrained", "random_init", "baseline")
FEATURE_LABELS = {"pretrained": "pretrained (data2vec)", "random_init": "random init", "baseline": "trivial baseline"}
BASELINE_NAMES = {
    "image": "raw pixels (32x32 grey)",
    "audio": "waveform statistics (duration, RMS, ZCR, 24 log-energy bands)",
    "text": "bag of tokens (the model's BPE)",
}
TARGET_GAP = 0.10  # pretrained must beat random init by >= 10 accuracy points

RESULTS_BEGIN, RESULTS_END = "<!-- d2v:results:begin -->", "<!-- d2v:results:end -->"
ATTEMPTS_END = "<!-- d2v:attempts:end -->"


# ------------------------------------------------------------------------------------------- features


def load_model(checkpoint: str | Path, *, random_init: bool = False, seed: int = 0):
    """The checkpoint (eval mode), or, with ``random_init``, the same architecture initialised with ``seed``
    exactly as ``d2v train`` initialises it (``torch.manual_seed(seed)`` then ``Data2VecModel(config)``)."""
    import torch

    from d2v.models.checkpoint import load_checkpoint
    from d2v.models.model import Data2VecModel

    ckpt = load_checkpoint(checkpoint)
    if random_init:
        torch.manual_seed(seed)
        ckpt.model = Data2VecModel(ckpt.config).eval()
    return ckpt


def waveform_statistics(wave: np.ndarray, sample_rate: int = 16000, bands: int = 24) -> np.ndarray:
    """Trivial audio features: duration, mean, std, RMS (dB), zero-crossing rate, and the log energy of
    ``bands`` equal-width frequency bands of the clip's average power spectrum (25 ms frames)."""
    wave = np.asarray(wave, dtype=np.float64)
    frame, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    padded = np.pad(wave, (0, max(0, frame - len(wave))))
    n = 1 + (len(padded) - frame) // hop
    frames = np.stack([padded[i * hop : i * hop + frame] for i in range(n)]) * np.hanning(frame)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    edges = np.linspace(0, len(power), bands + 1).astype(int)
    band_energy = np.log(np.asarray([power[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)]) + 1e-10)
    zcr = float(np.mean(np.abs(np.diff(np.signbit(wave).astype(np.int8))))) if len(wave) > 1 else 0.0
    rms = 10 * np.log10(np.mean(wave**2) + 1e-12)
    stats = [len(wave) / sample_rate, wave.mean(), wave.std(), rms, zcr]
    return np.concatenate([np.asarray(stats), band_energy - band_energy.mean()]).astype(np.float32)


def baseline_features(ds: LabelledSet, ckpt=None) -> np.ndarray:
    """The trivial baseline's features for every item of ``ds`` (text needs ``ckpt`` for its tokenizer)."""
    if ds.modality == "image":
        from PIL import Image

        return np.stack(
            [np.asarray(Image.open(p).convert("L").resize((32, 32)), dtype=np.float32).ravel() / 255 for p in ds.items]
        )
    if ds.modality == "audio":
        from d2v.models.preprocessing import AudioPreprocessingConfig, AudioPreprocessor

        pre = AudioPreprocessor(AudioPreprocessingConfig(normalize=False))
        return np.stack([waveform_statistics(pre.load_item(p), pre.cfg.sample_rate) for p in ds.items])
    if ckpt is None:
        raise ConfigError("the text baseline needs a checkpoint (its tokenizer)")
    from d2v.models.preprocessing import build_preprocessor

    pre = build_preprocessor(ckpt.preprocessing, ckpt.path)
    vocab = int(ckpt.config.text.vocab_size)
    out = np.zeros((len(ds), vocab), dtype=np.float32)
    for i, text in enumerate(ds.items):
        ids = np.asarray(pre.load_item(text), dtype=np.int64)
        out[i] = np.minimum(np.bincount(ids, minlength=vocab)[:vocab], 1)  # binary bag of tokens
    return out


def probe_accuracy(features: np.ndarray, ds: LabelledSet, *, seed: int = 0, train_limit: int | None = None) -> float:
    """Test-split accuracy of ``d2v probe``'s linear probe (StandardScaler + logistic regression, fit on the
    train split, or on a seeded subsample of ``train_limit`` train items)."""
    from d2v.training.probe import linear_probe

    train, test = ds.indices("train"), ds.indices("test")
    if train_limit:
        train = np.sort(np.random.default_rng(seed).permutation(train)[:train_limit])
    return linear_probe(features, list(ds.labels), train, test, seed)["test_accuracy"]


def evaluate(modality: str, checkpoint: str | Path, data_dir: str | Path, *, seed: int) -> dict[str, Any]:
    """Probe accuracies (test split) of one modality: pretrained and random init (``d2v probe`` and
    ``d2v probe --random-init``, same seed as the training run), and the trivial baseline."""
    from d2v.training.probe import run_probe

    data = probe_data_path(modality, data_dir)
    t0 = time.perf_counter()
    pretrained = run_probe(checkpoint, data, seed=seed, batch_size=64)
    random_init = run_probe(checkpoint, data, random_init=True, seed=seed, batch_size=64)
    result: dict[str, Any] = {
        "modality": modality,
        "checkpoint": str(checkpoint),
        "train_items": pretrained["num_train"],
        "test_items": pretrained["num_test"],
        "classes": pretrained["num_classes"],
        "top_k": pretrained.get("top_k"),
        "pooling": pretrained.get("pooling"),
        "pretrained": pretrained["test_accuracy"],
        "random_init": random_init["test_accuracy"],
        "majority": pretrained.get("majority_baseline"),
    }
    ds = load_labelled(modality, data_dir)
    result["baseline"] = probe_accuracy(baseline_features(ds, load_model(checkpoint)), ds, seed=seed)
    result["baseline_name"] = BASELINE_NAMES[modality]
    result["gap"] = result["pretrained"] - result["random_init"]
    result["probe_seconds"] = round(time.perf_counter() - t0, 1)
    return result


# --------------------------------------------------------------------------------------------- report


@dataclass
class QualityOptions:
    """``d2v quality-report``: how to build the models (``build``: the quickstart pipeline, into a temporary
    store; its ``store`` is not used) or which store to probe instead, and where the report goes."""

    build: QuickstartOptions
    out_md: Path
    out_png: Path
    store: Path | None = None  # probe the models of this store instead of building fresh ones
    record: str | None = None  # append a row with this note to the tuning log instead of writing the results
    json_out: Path | None = None  # also write the raw results here
    work_dir: Path | None = None  # parent of the temporary store (default: the system's temp dir)
    settings: tuple[str, ...] = ()  # the run's recipes / overrides as given (the tuning log's settings column)


def run_report(opts: QualityOptions) -> dict[str, Any]:
    """Build (or reuse) the default models, probe them and write the report. Returns the results."""
    from d2v.core.paths import sample_data_dir

    build = opts.build
    data_dir = Path(build.data_dir) if build.data_dir else sample_data_dir()
    results: dict[str, Any] = {"seed": build.seed, "modalities": {}, "overrides": list(opts.settings)}
    with tempfile.TemporaryDirectory(prefix="d2v-quality-", dir=opts.work_dir) as tmp:
        store = opts.store
        if store is None:
            store = Path(tmp) / "models"
            results["quickstart"] = build_models(replace(build, store=store, data_dir=data_dir))
        for modality in build.modalities:
            results["modalities"][modality] = probe_store_model(store, modality, data_dir, seed=build.seed)
    write_outputs(opts, results)
    return results


def probe_store_model(store: Path, modality: str, data_dir: Path, *, seed: int) -> dict[str, Any]:
    """:func:`evaluate` the checkpoint of ``store``'s default model for ``modality`` (with the seed it was
    trained with, ``seed`` when unknown), plus its training record; prints the result line."""
    model_dir = Path(store) / DEFAULT_MODEL_NAMES[modality]
    ckpt = model_dir / "checkpoint"
    if not ckpt.is_dir():
        raise NotFound(f"{model_dir} has no checkpoint/ (build it with `d2v quickstart`)")
    info = _read_json(model_dir / QUICKSTART_FILE)
    log.info("probing %s (%s)", modality, ckpt)
    res = evaluate(modality, ckpt, data_dir, seed=int(info.get("seed", seed)))
    res["train"] = {k: info.get(k) for k in ("recipe", "steps", "train_seconds", "final_loss", "overrides")}
    print(_result_line(res), flush=True)
    return res


def write_outputs(opts: QualityOptions, results: dict[str, Any]) -> None:
    """The raw JSON (``json_out``), then the tuning-log row (``record``) or the results block and chart."""
    if opts.json_out:
        opts.json_out.parent.mkdir(parents=True, exist_ok=True)
        opts.json_out.write_text(json.dumps(results, indent=2) + "\n")
    if opts.record is not None:
        append_attempt(opts.out_md, opts.record, results)
    else:
        write_markdown(opts.out_md, results, opts.out_png)
        write_chart(opts.out_png, results)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _result_line(res: dict[str, Any]) -> str:
    gap = res["gap"] * 100
    mark = "ok" if res["gap"] >= TARGET_GAP else "MISSED"
    return (
        f"{res['modality']:>5}: pretrained {res['pretrained']:.3f}  random init {res['random_init']:.3f}  "
        f"baseline {res.get('baseline', float('nan')):.3f}  gap {gap:+.1f} pts [{mark}]"
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def results_table(results: dict[str, Any]) -> str:
    lines = [
        "| modality | test items | pretrained | random init | gap (points) | trivial baseline | baseline features |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for m, r in results["modalities"].items():
        ok = "✅" if r["gap"] >= TARGET_GAP else "❌"
        lines.append(
            f"| {m} | {r['test_items']} | **{_pct(r['pretrained'])}** | {_pct(r['random_init'])} | "
            f"{100 * r['gap']:+.1f} {ok} | {_pct(r.get('baseline'))} | {r.get('baseline_name', '')} |"
        )
    return "\n".join(lines)


def training_table(results: dict[str, Any]) -> str:
    lines = ["| modality | recipe | steps | train time (s) | final loss |", "|---|---|---:|---:|---:|"]
    for m, r in results["modalities"].items():
        t = r.get("train") or {}
        loss = t.get("final_loss")
        lines.append(
            f"| {m} | `{t.get('recipe')}` | {t.get('steps')} | {t.get('train_seconds')} | "
            f"{'n/a' if loss is None else f'{loss:.4f}'} |"
        )
    return "\n".join(lines)


def _generated_block(results: dict[str, Any], png_name: str) -> str:
    total = (results.get("quickstart") or {}).get("total_seconds")
    parts = [
        RESULTS_BEGIN,
        f"Seed {results['seed']}; accuracy (%) of a linear probe on the held-out test split.",
        "",
        results_table(results),
        "",
        f"![probe accuracy per modality]({png_name})",
        "",
        "Pretraining runs behind these numbers (the quickstart pipeline"
        + (f", {total:.0f} s in all for pretraining + export on this machine):" if total else "):"),
        "",
        training_table(results),
        RESULTS_END,
    ]
    return "\n".join(parts)


def write_markdown(path: Path, results: dict[str, Any], png: Path) -> None:
    """Replace the generated block of ``path`` (creating the file from the template when needed)."""
    block = _generated_block(results, png.name if png.parent == path.parent else str(png))
    text = path.read_text() if path.is_file() else _TEMPLATE
    if RESULTS_BEGIN not in text:
        text = _TEMPLATE
    text = re.sub(re.escape(RESULTS_BEGIN) + r".*?" + re.escape(RESULTS_END), lambda _: block, text, flags=re.S)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    log.info("wrote %s", path)


def append_attempt(path: Path, note: str, results: dict[str, Any]) -> None:
    """Append one row (settings -> accuracies) to the tuning log of ``path``."""
    text = path.read_text() if path.is_file() else _TEMPLATE
    if ATTEMPTS_END not in text:
        text = _TEMPLATE
    cells = []
    for m in MODALITIES:
        r = results["modalities"].get(m)
        cells.append("" if r is None else f"{_pct(r['pretrained'])} / {_pct(r['random_init'])} ({100 * r['gap']:+.1f})")
    steps = ", ".join(f"{m}={(r.get('train') or {}).get('steps')}" for m, r in results["modalities"].items())
    overrides = "<br>".join(f"`{o}`" for o in results.get("overrides") or []) or "(committed recipes)"
    row = f"| {note} | {overrides} | {steps} | " + " | ".join(cells) + " |\n"
    text = text.replace(ATTEMPTS_END, row + ATTEMPTS_END)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    log.info("recorded attempt %r in %s", note, path)


def write_chart(path: Path, results: dict[str, Any]) -> None:
    """Grouped bar chart: probe accuracy per modality for the three feature sets (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = list(results["modalities"])
    x = np.arange(len(mods))
    width = 0.26
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    colors = {"pretrained": "#2b6cb0", "random_init": "#a0aec0", "baseline": "#ed8936"}
    for i, feat in enumerate(FEATURES):
        vals = [100 * (results["modalities"][m].get(feat) or 0.0) for m in mods]
        bars = ax.bar(x + (i - 1) * width, vals, width, label=FEATURE_LABELS[feat], color=colors[feat])
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(x, mods)
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Linear probe on held-out splits (seed {results['seed']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    log.info("wrote %s", path)


_TEMPLATE = f"""# Quality of the default tiny models

The default models that `d2v quickstart` builds (`d2v-text-tiny`, `d2v-image-tiny`, `d2v-audio-tiny`) are
pretrained with data2vec on the **train split** of the committed sample data (`data/README.md`; the test
split is never seen in pretraining). Each row below is a linear probe (`d2v probe`: StandardScaler +
logistic regression, fit on the train split, scored on the held-out test split; image test = 359 digits,
audio test = 120 clips of 2 speakers absent from training, text test = 394 docstrings) on three feature sets:

- **pretrained**: the served embedding of the pretrained model (mean over tokens of the average of the
  top-K layer outputs, each layer-normed);
- **random init**: the same architecture, preprocessing (and tokenizer) and seed, before any training step
  (`d2v probe --random-init`): exactly the weights pretraining started from;
- **trivial baseline**: raw 32x32 pixels (images), waveform statistics (audio: duration, mean, std, RMS,
  zero-crossing rate, 24 log-energy bands of the average spectrum), a binary bag of the model's BPE tokens (text).

Target: pretrained beats random init by at least 10 accuracy points in every modality.

Regenerate this report (results block, table and `quality.png`) with one command; it runs the quickstart
pipeline into a temporary store (same recipes, seed 0), then probes:

```bash
.venv/bin/d2v quality-report                     # or --store ~/.cache/d2v/models to probe an existing store
```

{RESULTS_BEGIN}
{RESULTS_END}

## Tuning log

Every row is one run of `d2v quality-report --no-export --record NOTE [--recipe MODALITY=RECIPE]
[--override MODALITY:KEY=VALUE ...]` on the same data and seed (cells: pretrained / random init accuracy in %,
and the gap in points). The machine was shared with other jobs, so times are not comparable between rows.

| attempt | settings (over the quickstart recipe of the time) | steps | text | image | audio |
|---|---|---|---|---|---|
{ATTEMPTS_END}
"""
