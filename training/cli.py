"""``d2v train``, ``d2v train plot``, ``d2v probe`` and ``d2v bench train``. Argparse only at import time.

d2v train --config tiny-audio-v1 data.path=DIR optim.lr=5e-4 [--resume [PATH]] [--nproc N]
d2v train plot RUN_DIR
d2v probe CKPT --data LABELLED [--random-init]
d2v bench train --modalities audio image text --sizes tiny base
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from .train import add_train_arguments

    train = subparsers.add_parser(
        "train",
        help="pretrain a data2vec model (v1 or 2.0); 'd2v train plot RUN_DIR' draws a run's curves",
        description="Pretrain with a recipe (tiny/base/large x audio/image/text x v1/v2) and KEY=VALUE overrides. "
        "'d2v train plot RUN_DIR' redraws RUN_DIR/training.png.",
    )
    add_train_arguments(train)
    train.add_argument("--nproc", type=int, default=1, help="processes on this machine (re-launches via torchrun)")
    train.add_argument("--nnodes", default="1", help="torchrun --nnodes (multi-node: also --rdzv-endpoint)")
    train.add_argument("--node-rank", type=int, default=None, help="torchrun --node-rank")
    train.add_argument("--rdzv-endpoint", default=None, help="torchrun rendezvous HOST:PORT (multi-node)")
    train.set_defaults(func=_train)

    probe = subparsers.add_parser(
        "probe",
        help="linear probe (logistic regression) on frozen layer-averaged embeddings of a checkpoint",
    )
    probe.add_argument("checkpoint", nargs="?", help="checkpoint directory (model.safetensors + config.json)")
    probe.add_argument("--data", required=True, help="labelled set: a directory tree LABEL/FILE or a JSONL")
    probe.add_argument("--random-init", action="store_true", help="same architecture, untrained (baseline)")
    probe.add_argument("--config", help="with --random-init and no checkpoint: a recipe to take the model from")
    probe.add_argument("--top-k", type=int, help="layers averaged (default: the checkpoint's embedding config)")
    probe.add_argument("--pooling", choices=("mean", "cls"), help="pooled vector (default: the checkpoint's)")
    probe.add_argument("--batch-size", type=int, default=16)
    probe.add_argument("--test-fraction", type=float, default=0.3, help="held-out share when no split is given")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--json", help="also write the report to this JSON file")
    probe.set_defaults(func=_probe)


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    bench = bench_subparsers.add_parser(
        "train", help="training throughput per modality, size, v1 vs 2.0, fp32 vs bf16 (JSON + table)"
    )
    bench.add_argument("--modalities", nargs="+", default=["audio", "image", "text"])
    bench.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    bench.add_argument("--versions", nargs="+", default=["v1", "v2"])
    bench.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    bench.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up step)")
    bench.add_argument("--batch-size", type=int, default=None, help="per-step batch (default: per size)")
    bench.add_argument("--block-size", type=int, default=None, help="text tokens per block (default: per size)")
    bench.add_argument("--out", default="bench/train.json", help="JSON report path (a .md table beside it)")
    bench.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    bench.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    bench.set_defaults(func=_bench)


def _train(args: argparse.Namespace) -> int:
    positional = list(args.overrides or [])
    if positional and positional[0] == "plot":
        if len(positional) != 2:
            from d2v.core.errors import ConfigError

            raise ConfigError("usage: d2v train plot RUN_DIR")
        from .plots import plot_run

        print(plot_run(positional[1]))
        return 0
    if args.nproc > 1 or args.nnodes != "1":
        return _launch(args)
    from .train import run

    return run(args)


def _launch(args: argparse.Namespace) -> int:
    """Re-launch ``d2v.training.train`` under ``torch.distributed.run`` with the same arguments."""
    from .train import load_from_args

    load_from_args(args)  # fail fast (bad field / missing data) before spawning processes
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}", f"--nnodes={args.nnodes}"]
    if args.rdzv_endpoint:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}"]
        if args.node_rank is not None:
            cmd.append(f"--node-rank={args.node_rank}")
    else:
        cmd.append("--standalone")
    cmd += ["-m", "d2v.training.train"]
    if args.config:
        cmd += ["--config", args.config]
    if args.resume is not None:
        cmd += ["--resume", args.resume] if args.resume else ["--resume"]
    if args.max_steps is not None:
        cmd += ["--max-steps", str(args.max_steps)]
    if args.out:
        cmd += ["--out", args.out]
    cmd += list(args.overrides or [])
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    return subprocess.call(cmd, env=env)


def _probe(args: argparse.Namespace) -> int:
    from .probe import run_probe_cli

    return run_probe_cli(args)


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench_cli

    return run_bench_cli(args)
