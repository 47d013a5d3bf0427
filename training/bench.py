"""``d2v bench train``: training throughput per modality, model size, v1 vs 2.0, fp32 vs bf16 autocast.

Each cell runs the real ``Trainer`` (data loading, student + teacher forward, backward, AdamW, EMA update) of
the bundled recipe ``{size}-{modality}-{version}`` on a small synthetic dataset written to a temp directory,
for one warm-up step plus ``--steps`` timed steps, and reports the median per-step rates:

* ``samples_per_s``: input clips / images / text blocks per second;
* ``masked_preds_per_s``: the same, counting a sample trained with M masked copies M times (data2vec 2.0's
  ``clone_batch``), the figure the 2.0-vs-v1 target is about;
* ``tokens_per_s``: front-end tokens (audio frames, patches, text tokens) of the inputs per second.

Batch sizes and crop lengths are reduced from the recipes (CPU-friendly, and equal for v1 and v2 of one
modality and size, so the ratio compares like with like). Writes JSON and a Markdown table. Not a test.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# (per-step batch, audio seconds, text block) per size: small enough for a CPU, equal across versions.
SHAPES = {"tiny": (8, 1.0, 64), "base": (2, 2.0, 128), "large": (1, 2.0, 128)}


def _synthetic_data(root: Path, modality: str, n: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    if modality == "audio":
        import soundfile as sf

        (root / "audio").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            t = np.arange(int(16000 * seconds)) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(t.shape)
            sf.write(root / "audio" / f"{i}.wav", wave.astype(np.float32), 16000)
        return root / "audio"
    if modality == "image":
        from PIL import Image

        (root / "images").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        return root / "images"
    words = [
        "data",
        "two",
        "vec",
        "learns",
        "contextual",
        "targets",
        "from",
        "an",
        "exponential",
        "moving",
        "average",
        "teacher",
        "model",
    ]
    text = "\n".join(" ".join(rng.choice(words, size=200)) for _ in range(max(n, 40)))
    (root / "corpus.txt").write_text(text)
    return root / "corpus.txt"


def bench_cell(
    modality: str,
    size: str,
    version: str,
    precision: str,
    *,
    steps: int,
    batch: int | None = None,
    block: int | None = None,
    device: str = "auto",
    threads: int = 0,
) -> dict:
    """One configuration -> a result dict (median rates over the timed steps)."""
    from .config import load_config, validate
    from .distributed import DistInfo, pick_device
    from .metrics import read_metrics
    from .trainer import Trainer

    bs, seconds, default_block = SHAPES[size]
    bs = batch or bs
    block = block or default_block
    with tempfile.TemporaryDirectory(prefix="d2v-bench-") as tmp:
        root = Path(tmp)
        data = _synthetic_data(root, modality, max(2 * bs, 4), seconds)
        overrides = [
            f"data.path={data}",
            f"data.batch_size={bs}",
            f"data.max_seconds={seconds}",
            f"data.min_seconds={min(seconds, 0.5)}",
            f"data.block_size={block}",
            "data.vocab_size=1000",
            "data.num_workers=0",
            "optim.grad_accum=1",
            f"run.out_dir={root / 'run'}",
            f"run.max_steps={steps + 1}",
            f"run.precision={precision}",
            f"run.device={device}",
            "run.log_every=1",
            "run.save_every=1000000",
            "run.progress=false",
            "run.tensorboard=false",
            "run.keep_best=false",
            f"run.threads={threads}",
        ]
        if modality == "image":
            overrides.append("preprocessing.resize_size=256" if size != "tiny" else "preprocessing.resize_size=36")
        if modality == "audio":
            overrides.append("data.max_tokens=0")  # fixed-size batches instead of the recipe's sample budget
        elif modality == "text":
            overrides.append(f"data.max_tokens={bs * block}")  # <= bs full blocks (v1 document blocks need one)
        cfg = load_config(f"{size}-{modality}-{version}", overrides)
        validate(cfg)
        info = DistInfo(device=pick_device(device))
        trainer = Trainer(cfg, info).setup()
        start = time.perf_counter()
        try:
            trainer.train(until=steps + 1)
        finally:
            trainer.metrics.close()  # no plot / checkpoint for a benchmark
        wall = time.perf_counter() - start
        records = read_metrics(root / "run")[1:]  # drop the warm-up step
        clones = trainer.pretrainer.clones
        params = sum(p.numel() for p in trainer.model.parameters())
    med = {k: statistics.median(r[k] for r in records) for k in ("samples_per_s", "masked_preds_per_s", "tokens_per_s")}
    return {
        "modality": modality,
        "size": size,
        "version": version,
        "precision": precision,
        "device": str(info.device),
        "batch": bs,
        "clone_batch": clones,
        "params_m": round(params / 1e6, 2),
        "steps": len(records),
        "samples_per_s": med["samples_per_s"],
        "masked_preds_per_s": med["masked_preds_per_s"],
        "tokens_per_s": med["tokens_per_s"],
        "wall_s": wall,
    }


def machine() -> dict:
    """What the numbers depend on: CPU bf16 support (AMX / AVX512-BF16) decides whether bf16 autocast helps."""
    import os
    import platform

    import torch

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_amx_bf16": "amx_bf16" in flags,
        "cpu_avx512_bf16": "avx512_bf16" in flags,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def ratios(results: list[dict]) -> list[dict]:
    """data2vec 2.0 / v1 masked predictions per second for each (modality, size, precision)."""
    index = {(r["modality"], r["size"], r["precision"], r["version"]): r for r in results if "error" not in r}
    out = []
    for (m, s, p, v), r in index.items():
        if v == "v2" and (m, s, p, "v1") in index:
            v1 = index[(m, s, p, "v1")]
            out.append({"modality": m, "size": s, "precision": p,
                        "v2_over_v1_masked_preds": r["masked_preds_per_s"] / v1["masked_preds_per_s"],
                        "v2_over_v1_samples": r["samples_per_s"] / v1["samples_per_s"]})  # fmt: skip
    return out


def table(results: list[dict], ratio_rows: list[dict]) -> str:
    lines = [
        "| modality | size | version | precision | batch x M | params (M) | samples/s | masked preds/s | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['modality']} | {r['size']} | {r['version']} | {r['precision']} | error: {r['error']} |||||"
            )
            continue
        lines.append(
            f"| {r['modality']} | {r['size']} | {r['version']} | {r['precision']} | {r['batch']} x {r['clone_batch']} "
            f"| {r['params_m']} | {r['samples_per_s']:.2f} | {r['masked_preds_per_s']:.2f} | {r['tokens_per_s']:.0f} |"
        )
    if ratio_rows:
        lines += [
            "",
            "| modality | size | precision | 2.0 / v1 masked preds/s | 2.0 / v1 samples/s |",
            "|---|---|---|---|---|",
        ]
        for r in ratio_rows:
            lines.append(
                f"| {r['modality']} | {r['size']} | {r['precision']} | {r['v2_over_v1_masked_preds']:.2f}x "
                f"| {r['v2_over_v1_samples']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def run_bench_cli(args) -> int:
    logging.getLogger("d2v.training").setLevel(logging.WARNING)
    results = []
    for modality in args.modalities:
        for size in args.sizes:
            for version in args.versions:
                for precision in args.precisions:
                    try:
                        r = bench_cell(modality, size, version, precision, steps=args.steps, batch=args.batch_size,
                                       block=args.block_size, device=args.device, threads=args.threads)  # fmt: skip
                    except Exception as exc:  # one failing cell must not lose the others
                        log.exception("bench %s %s %s %s failed", modality, size, version, precision)
                        r = {"modality": modality, "size": size, "version": version, "precision": precision,
                             "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                    results.append(r)
                    if "error" not in r:
                        print(
                            f"{modality:5s} {size:5s} {version} {precision}: {r['samples_per_s']:8.2f} samples/s "
                            f"{r['masked_preds_per_s']:8.2f} masked preds/s {r['tokens_per_s']:9.0f} tokens/s",
                            flush=True,
                        )
    ratio_rows = ratios(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "results": results, "ratios": ratio_rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    md = table(results, ratio_rows)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0
