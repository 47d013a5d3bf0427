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

import csv
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from d2v.errors import ConfigError, NotFound
from d2v.paths import DEFAULT_MODEL_NAMES
from d2v.quickstart_impl import MODALITIES

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
ATTEMPTS_BEGIN, ATTEMPTS_END = "<!-- d2v:attempts:begin -->", "<!-- d2v:attempts:end -->"


# ------------------------------------------------------------------------------------------------ data


@dataclass
class LabelledSet:
    """One modality's labelled sample data: raw items (file paths or texts), labels and the fixed split."""

    modality: str
    items: list[Any]
    labels: list[str]
    splits: list[str]
    extra: list[dict[str, str]] = field(default_factory=list)

    def indices(self, split: str) -> np.ndarray:
        return np.asarray([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)


def load_labelled(modality: str, data_dir: str | Path) -> LabelledSet:
    """Read ``data/<modality>``'s manifest (``data/README.md``): images and audio from ``manifest.csv``,
    text from ``docstrings.jsonl``."""
    data_dir = Path(data_dir)
    if modality == "text":
        path = data_dir / "text" / "docstrings.jsonl"
        if not path.is_file():
            raise NotFound(f"labelled text data not found: {path}")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return LabelledSet("text", [r["text"] for r in rows], [r["label"] for r in rows], [r["split"] for r in rows])
    if modality not in ("image", "audio"):
        raise ConfigError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
    root = data_dir / ("images" if modality == "image" else "audio")
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise NotFound(f"labelled {modality} data not found: {manifest}")
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return LabelledSet(
        modality,
        [root / r["path"] for r in rows],
        [r["label"] for r in rows],
        [r["split"] for r in rows],
        rows,
    )


def write_pretraining_data(modality: str, data_dir: str | Path, out_dir: str | Path) -> Path:
    """The unlabelled pretraining input: the train split only (the test split stays unseen until the probe).

    Images / audio: a list of absolute paths (``.txt`` manifest, one per line); text: a JSONL of ``text``.
    """
    ds = load_labelled(modality, data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = ds.indices("train")
    if modality == "text":
        path = out_dir / "text-train.jsonl"
        path.write_text("".join(json.dumps({"text": ds.items[i]}) + "\n" for i in train), encoding="utf-8")
    else:
        path = out_dir / f"{modality}-train.txt"
        path.write_text("".join(f"{Path(ds.items[i]).resolve()}\n" for i in train))
    return path


# ------------------------------------------------------------------------------------------- features


def load_model(checkpoint: str | Path, *, random_init: bool = False, seed: int = 0):
    """The checkpoint (eval mode), or, with ``random_init``, the same architecture initialised with ``seed``
    exactly as ``d2v train`` initialises it (``torch.manual_seed(seed)`` then ``Data2VecModel.from_config``)."""
    import torch

    from d2v.models.checkpoint import load_checkpoint
    from d2v.models.model import Data2VecModel

    ckpt = load_checkpoint(checkpoint)
    if random_init:
        torch.manual_seed(seed)
        ckpt.model = Data2VecModel.from_config(ckpt.config).eval()
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


def probe_data_path(modality: str, data_dir: str | Path) -> Path:
    """What ``d2v probe --data`` reads for a modality's sample set (the manifests carry the split)."""
    data_dir = Path(data_dir)
    return {"image": data_dir / "images", "audio": data_dir / "audio", "text": data_dir / "text" / "docstrings.jsonl"}[
        modality
    ]


def evaluate(
    modality: str,
    checkpoint: str | Path,
    data_dir: str | Path,
    *,
    seed: int,
    baseline: bool = True,
) -> dict[str, Any]:
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
    if baseline:
        ds = load_labelled(modality, data_dir)
        result["baseline"] = probe_accuracy(baseline_features(ds, load_model(checkpoint)), ds, seed=seed)
        result["baseline_name"] = BASELINE_NAMES[modality]
    result["gap"] = result["pretrained"] - result["random_init"]
    result["probe_seconds"] = round(time.perf_counter() - t0, 1)
    return result


# --------------------------------------------------------------------------------------------- report


def run_report(
    *,
    out_md: Path,
    out_png: Path,
    store: Path | None = None,
    seed: int = 0,
    steps_scale: float = 1.0,
    max_steps: int | None = None,
    modalities: Sequence[str] = MODALITIES,
    overrides: Sequence[str] = (),
    record: str | None = None,
    json_out: Path | None = None,
    data_dir: Path | None = None,
    work_dir: Path | None = None,
    threads: int = 0,
    jobs: int = 0,
    progress: bool = True,
    export: bool = True,
    recipes: Sequence[str] = (),
) -> dict[str, Any]:
    """Build (or reuse) the default models, probe them and write the report. Returns the results."""
    import tempfile

    from d2v.paths import sample_data_dir
    from d2v.quickstart_impl import QuickstartOptions, build_models, parse_overrides, parse_recipes

    data_dir = Path(data_dir) if data_dir else sample_data_dir()
    per_modality = parse_overrides(overrides, modalities)
    results: dict[str, Any] = {
        "seed": seed,
        "modalities": {},
        "overrides": [f"recipe {r}" for r in recipes] + list(overrides),
    }
    with tempfile.TemporaryDirectory(prefix="d2v-quality-", dir=work_dir) as tmp:
        if store is None:
            store = Path(tmp) / "models"
            opts = QuickstartOptions(
                store=store,
                seed=seed,
                steps_scale=steps_scale,
                max_steps=max_steps,
                modalities=tuple(modalities),
                overrides=per_modality,
                variants=(),
                data_dir=data_dir,
                threads=threads,
                jobs=jobs,
                progress=progress,
                export=export,
                recipes=parse_recipes(recipes),
            )
            summary = build_models(opts)
            results["quickstart"] = summary
        for modality in modalities:
            model_dir = Path(store) / DEFAULT_MODEL_NAMES[modality]
            ckpt = model_dir / "checkpoint"
            if not ckpt.is_dir():
                raise NotFound(f"{model_dir} has no checkpoint/ (build it with `d2v quickstart`)")
            info = _read_json(model_dir / "quickstart.json")
            model_seed = int(info.get("seed", seed))
            log.info("probing %s (%s)", modality, ckpt)
            res = evaluate(modality, ckpt, data_dir, seed=model_seed)
            res["train"] = {k: info.get(k) for k in ("recipe", "steps", "train_seconds", "final_loss", "overrides")}
            results["modalities"][modality] = res
            print(_result_line(res), flush=True)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2) + "\n")
    if record is not None:
        append_attempt(out_md, record, results)
    else:
        write_markdown(out_md, results, out_png)
        write_chart(out_png, results)
    return results


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
