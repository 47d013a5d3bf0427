"""The reports of ``d2v bench peers`` (:mod:`d2v.workflows.bench_peers`): a Markdown table, a PNG bar chart
(matplotlib, Agg) and the regenerated section of ``docs/benchmarks.md`` between the peers markers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

BEGIN_MARK = "<!-- d2v:peers:begin -->"
END_MARK = "<!-- d2v:peers:end -->"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _cosine(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 0.999995:
        return "1.0" if value >= 1.0 - 5e-8 else f"{value:.7f}"
    return f"{value:.5f}"


def host_line(result: dict[str, Any]) -> str:
    host = result["host"]
    flags = ", ".join(host["flags"]) or "none of the tracked ones"
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    gpu = (
        "CUDA (ONNX Runtime's CUDA provider): its rows are in the table"
        if result.get("capabilities", {}).get("cuda")
        else "none on this host, so no TensorRT fp16 / CUDA provider rows (run the same command on a GPU machine)"
    )
    return (
        f"CPU: {host['cpu']} ({host['machine']}; flags: {flags}); {result['threads']} threads; {versions}. GPU: {gpu}."
    )


def format_markdown(result: dict[str, Any], *, heading_level: int = 1, png: str | None = "peers.png") -> str:
    """The results table: items/s, the ratio vs HF's best CPU configuration of the same run, cosine."""
    h = "#" * heading_level
    lines = [
        f"{h} Peers: HF transformers vs the project's engines (`d2v bench peers --size {result['size']}`)",
        "",
        f"{result['date']}, one run, random weights at trained-network scales (the same weights on every row), "
        f"{result['repeats']} timed repeats per row after a warm-up (median). {host_line(result)}",
        "",
        "Ratio = items/s over HF's best CPU configuration measured in the same run (the faster of fp32 eager "
        "and bf16 autocast; named per modality). Cosine = worst row of the served pooled embedding (mean) vs "
        "a reference computed independently from HF fp32 hidden states (top-K block outputs, parameter-free "
        "layer norm per token, averaged, masked mean).",
        "",
        "| workload | engine / variant | items/s | x HF best | cosine |",
        "|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for modality, m in result["modalities"].items():
        workload = f"{m['workload']} (HF best: {m['peer']})"
        for r in m["rows"]:
            label = r["label"]
            if r["kind"] == "gateway":
                label += " \\*"
            lines.append(
                f"| {workload} | {label} | {_num(r['items_per_s'], '.1f')} | {_num(r['ratio_vs_peer'], '.2f')} "
                f"| {_cosine(r['cosine'])} |"
            )
            workload = ""
        sel = m.get("selection")
        if sel:
            measured = {f"{c['engine']}/{c['variant']}" for c in sel["candidates"]}
            offered = [f"{r['engine']}/{r['variant']}" for r in m["rows"] if r["kind"] == "engine"]
            unmeasured = [c for c in offered if c not in measured]
            source = {"export": "the export's calibration", "cache": "a cached calibration"}.get(
                sel["source"], "a calibration measured at load (the export's did not cover every candidate)"
            )
            notes.append(
                f"{modality}: auto chose {sel['engine']}/{sel['variant']} ({sel['precision']}) from {source}, "
                f"min cosine {sel['min_cosine']}"
                + (f"; not measured within its budget: {', '.join(unmeasured)}" if unmeasured else "")
            )
        notes.extend(m.get("notes", []))
        gw = next((r for r in m["rows"] if r["kind"] == "gateway"), None)
        if gw is not None:
            notes.append(
                f"\\* {modality} gateway: HTTP end to end, {gw['concurrency']} concurrent clients x {gw['items']} "
                f"items/request (inputs {gw['inputs']}); its ratio is vs HF {gw['peer']} on the same "
                f"{gw['items']} preprocessed items per call ({gw['peer_items_per_s']:.1f} items/s); the auto "
                f"engine called directly on that load: {gw['engine_items_per_s']:.1f} items/s; "
                f"{gw['errors']} errors"
            )
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    if png:
        lines += ["", f"![peers]({png})"]
    return "\n".join(lines)


def plot_png(result: dict[str, Any], path: Path) -> None:
    """One panel per modality: horizontal bars of the ratio vs HF's best configuration (1.0 marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = list(result["modalities"].items())
    height = max(len(m["rows"]) for _, m in mods) * 0.38 + 1.2
    fig, axes = plt.subplots(len(mods), 1, figsize=(9, height * len(mods)), squeeze=False)
    colors = {"hf": "#888888", "engine": "#4c72b0", "auto": "#dd8452", "gateway": "#55a868"}
    for ax, (_, m) in zip(axes[:, 0], mods, strict=True):
        rows = m["rows"][::-1]
        ratios = [r["ratio_vs_peer"] for r in rows]
        ax.barh([r["label"] for r in rows], ratios, color=[colors[r["kind"]] for r in rows])
        ax.axvline(1.0, color="black", linewidth=0.8)
        for y, v in enumerate(ratios):
            ax.text(v, y, f" {v:.2f}x", va="center", fontsize=8)
        ax.set_title(f"{m['workload']}: items/s vs HF {m['peer']}", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlim(0, max(ratios) * 1.2)
    host = result["host"]
    fig.suptitle(f"d2v bench peers ({result['size']}): {host['cpu']}, {result['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_docs(path: Path, section: str) -> None:
    """Replace what lies between the peers markers of ``path`` with ``section`` (markers appended at the end
    when absent)."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN_MARK}\n{section.strip()}\n{END_MARK}"
    if BEGIN_MARK in text and END_MARK in text and text.index(BEGIN_MARK) < text.index(END_MARK):
        head, rest = text.split(BEGIN_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)


def write_outputs(result: dict[str, Any], out: Path, *, docs: Path | None = None) -> dict[str, Path]:
    """``peers.json``, ``peers.md`` and ``peers.png`` under ``out``; optionally the docs section."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "peers.json", "md": out / "peers.md", "png": out / "peers.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(format_markdown(result) + "\n")
    plot_png(result, paths["png"])
    if docs is not None:  # the chart goes beside the docs page, which links it
        docs = Path(docs)
        chart = docs.with_name("peers.png")
        if chart.resolve() != paths["png"].resolve():
            shutil.copyfile(paths["png"], chart)
        update_docs(docs, format_markdown(result, heading_level=2, png=chart.name))
        paths["docs"], paths["docs_png"] = docs, chart
    return paths
