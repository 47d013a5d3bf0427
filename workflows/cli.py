"""``d2v quickstart`` and ``d2v quality-report``: argparse only at import; the work is in
``d2v.workflows.quickstart`` and ``d2v.workflows.quality`` (torch, imported when a command runs).

    d2v quickstart [--store DIR] [--seed 0] [--steps-scale 1.0] [--modalities text image audio] [--force]
    d2v quality-report [--store DIR] [--record NOTE] [--override MODALITY:KEY=VALUE ...]
    d2v bench peers [--size tiny|base] [--modalities ...] [--repeats N] [--threads N] [--out DIR] [--no-gateway]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d2v.core.contract import MODALITIES

if TYPE_CHECKING:
    from d2v.workflows.options import QuickstartOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="pretrain + export the default tiny text/image/audio models into the model store",
        description="Pretrain tiny data2vec models on the bundled sample data (recipes "
        "training/recipes/quickstart-*.yaml), export them to ONNX and install them as "
        "<store>/d2v-{text,image,audio}-tiny. Models already in the store are kept unless --force.",
    )
    _common(p)
    p.add_argument("--force", action="store_true", help="rebuild models that are already in the store")
    p.add_argument(
        "--variants",
        default="none",
        help="extra ONNX variants (comma list of fp16,int8,bf16, or 'none' = fp32 only, the default); "
        "if one misses its cosine bar the model is exported in fp32 only",
    )
    p.set_defaults(func=_quickstart)

    q = subparsers.add_parser(
        "quality-report",
        help="probe the default models vs random init vs a trivial baseline; writes docs/quality.{md,png}",
        description="Pretrain the default models with the quickstart recipes (in a temporary store, or probe "
        "the models of --store), fit linear probes on the sample data's train splits, score them on the "
        "held-out test splits, and write the report.",
    )
    _common(q, store_help="probe the models of this store instead of pretraining fresh ones")
    q.add_argument("--out", type=Path, default=None, help="markdown report (default: docs/quality.md)")
    q.add_argument("--png", type=Path, default=None, help="bar chart (default: beside --out, quality.png)")
    q.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    q.add_argument(
        "--record",
        metavar="NOTE",
        default=None,
        help="append this run to the report's tuning log instead of replacing the results block",
    )
    q.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        help="probe the checkpoints without exporting them (faster tuning runs; same numbers)",
    )
    q.set_defaults(func=_quality)


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    from d2v.workflows import bench_extract  # argparse only at import, like this module

    bench_extract.register(bench_subparsers)
    p = bench_subparsers.add_parser(
        "peers",
        help="HF transformers (fp32 eager, bf16 autocast) vs every engine/variant, auto and the gateway",
        description="Build random-weight HF Data2Vec models offline, convert and export them, and measure on "
        "the same tensors: HF fp32 eager and bf16 autocast, every (engine, variant) this host runs, the auto "
        "choice and (unless --no-gateway) the gateway at 16 concurrent clients. Reports items/s, the ratio vs "
        "HF's faster configuration and the worst-row cosine vs a reference from HF hidden states "
        "(peers.json, peers.md, peers.png under --out).",
    )
    p.add_argument("--size", choices=["tiny", "base"], default="base", help="base: the real comparison (default)")
    p.add_argument("--modalities", nargs="+", choices=["text", "audio", "image"], default=["text", "audio", "image"])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per row, after one warm-up (median)")
    p.add_argument("--threads", type=int, default=0, help="torch / ORT / OpenVINO threads (default: all cores)")
    p.add_argument("--out", type=Path, default=Path("bench-peers"), help="directory for peers.{json,md,png}")
    p.add_argument("--no-gateway", dest="gateway", action="store_false", help="skip the gateway end to end")
    p.add_argument("--gateway-requests", type=int, default=200, help="requests per gateway phase (at most)")
    p.add_argument("--gateway-duration", type=float, default=20.0, help="seconds per gateway phase (at most)")
    p.add_argument(
        "--gateway-modalities",
        nargs="+",
        choices=["text", "audio", "image"],
        default=None,
        help="modalities that also get a gateway run (default: all of --modalities)",
    )
    p.add_argument(
        "--calibration-budget",
        type=float,
        default=None,
        help="seconds for the export's calibration and for auto's (default: the project's defaults)",
    )
    p.add_argument("--seed", type=int, default=0, help="weights seed")
    p.add_argument(
        "--update-docs",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="regenerate the peers section of FILE (default docs/benchmarks.md of the repository)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_bench_peers)


def _bench_peers(args: argparse.Namespace) -> int:
    from d2v.core.paths import repo_root
    from d2v.workflows.bench_peers import PeersOptions, run_peers
    from d2v.workflows.bench_peers_report import format_markdown

    docs = None
    if args.update_docs is not None:
        docs = Path(args.update_docs) if args.update_docs else repo_root() / "docs" / "benchmarks.md"
    opts = PeersOptions(
        size=args.size,
        modalities=tuple(args.modalities),
        repeats=args.repeats,
        threads=args.threads,
        out=args.out,
        gateway=args.gateway,
        gateway_requests=args.gateway_requests,
        gateway_duration_s=args.gateway_duration,
        gateway_modalities=tuple(args.gateway_modalities or args.modalities),
        calibration_budget_s=args.calibration_budget,
        seed=args.seed,
        progress=args.progress,
        docs=docs,
    )
    result = run_peers(opts)
    print(format_markdown(result, png=None))
    print(f"wrote {args.out}/peers.json, peers.md, peers.png" + (f" and {docs}" if docs else ""))
    return 0


def _common(p: argparse.ArgumentParser, store_help: str | None = None) -> None:
    p.add_argument("--store", type=Path, default=None, help=store_help or "model store (default: $D2V_HOME/models)")
    p.add_argument("--seed", type=int, default=0, help="training (and random-init) seed (default 0)")
    p.add_argument(
        "--steps-scale",
        "--budget",
        dest="steps_scale",
        type=float,
        default=1.0,
        help="multiply every recipe's step count (e.g. 0.02 for a smoke run)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="train every model for exactly N steps")
    p.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="[MODALITY:]KEY=VALUE",
        help="extra training override for one modality (text:optim.lr=1e-3) or all (repeatable)",
    )
    p.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="MODALITY=RECIPE",
        help="train MODALITY from another recipe (bundled name or YAML) instead of quickstart-MODALITY",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads per training (default: the recipe's, 1)")
    p.add_argument("--jobs", type=int, default=0, help="trainings side by side (default: one per CPU core)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def quickstart_options(args: argparse.Namespace, **fields: Any) -> QuickstartOptions:
    """The :class:`QuickstartOptions` of the flags both commands share (:func:`_common`; ``--store`` is not
    among them: it names the store to build for one command, the store to probe for the other), plus
    ``fields`` (the command's own)."""
    from d2v.workflows.options import QuickstartOptions, parse_overrides, parse_recipes

    return QuickstartOptions(
        seed=args.seed,
        steps_scale=args.steps_scale,
        max_steps=args.max_steps,
        modalities=tuple(args.modalities),
        overrides=parse_overrides(args.override, args.modalities),
        recipes=parse_recipes(args.recipe),
        threads=args.threads,
        jobs=args.jobs,
        progress=args.progress,
        **fields,
    )


def _quickstart(args: argparse.Namespace) -> int:
    from d2v.workflows.quickstart import run_quickstart

    variants = () if args.variants.lower() == "none" else tuple(v for v in args.variants.split(",") if v.strip())
    run_quickstart(quickstart_options(args, store=args.store, force=args.force, variants=variants))
    return 0


def _quality(args: argparse.Namespace) -> int:
    from d2v.core.paths import repo_root
    from d2v.workflows.quality import TARGET_GAP, QualityOptions, run_report

    out = args.out or repo_root() / "docs" / "quality.md"
    png = args.png or out.with_suffix(".png")
    opts = QualityOptions(
        build=quickstart_options(args, export=args.export),
        out_md=out,
        out_png=png,
        store=args.store,
        record=args.record,
        json_out=args.json,
        settings=(*(f"recipe {r}" for r in args.recipe), *args.override),
    )
    results = run_report(opts)
    missed = [m for m, r in results["modalities"].items() if r["gap"] < TARGET_GAP]
    print(f"wrote {out}" + ("" if args.record else f" and {png}"))
    if missed:
        print(f"target missed (pretrained - random init < 10 points): {', '.join(missed)}")
    return 0
