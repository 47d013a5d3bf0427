"""Entry point of one training process: ``python -m d2v.training.train`` (what ``torchrun`` and
``d2v train --nproc N`` launch) and the in-process body of ``d2v train``.

    torchrun --nproc-per-node 2 -m d2v.training.train --config tiny-audio-v1 data.path=DIR
    torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --nproc-per-node 8 \
        -m d2v.training.train --config base-audio-v1 data.path=/data/librispeech.tsv

Parse the config once, set up the process group, build the ``Trainer``, train, close, and tear the group
down in ``finally`` (docs/aesthetics P7).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from d2v.core.errors import D2VError

log = logging.getLogger(__name__)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="recipe YAML, or a bundled recipe name such as tiny-audio-v1")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=5e-4")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="resume from a checkpoint step dir or run dir (default: the run's latest checkpoint)",
    )
    parser.add_argument("--max-steps", type=int, help="shortcut for run.max_steps=N")
    parser.add_argument("--out", help="shortcut for run.out_dir=DIR")


def load_from_args(args: argparse.Namespace):
    """The validated ``TrainConfig`` of parsed ``d2v train`` arguments."""
    from .config import load_config, validate

    if args.resume and "=" in args.resume:  # ``--resume optim.lr=1e-4``: argparse took an override for PATH
        args.overrides = [args.resume, *(args.overrides or [])]
        args.resume = ""

    overrides = list(args.overrides or [])
    if args.max_steps is not None:
        overrides.append(f"run.max_steps={args.max_steps}")
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    validate(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    """Train in this process (one rank when launched by torchrun)."""
    cfg = load_from_args(args)
    from .distributed import setup_distributed, teardown_distributed
    from .trainer import Trainer

    resume = None
    if args.resume is not None:
        resume = args.resume or Path(cfg.run.out_dir)
    info = setup_distributed(cfg.run.device)
    trainer = None
    finished = False
    try:
        trainer = Trainer(cfg, info, resume=resume).setup()
        final = trainer.train()
        if info.is_main:
            summary = ", ".join(f"{k}={final[k]:.4g}" for k in ("loss", "target_std", "pred_std") if k in final)
            log.info(
                "finished %d steps: %s; checkpoints in %s", trainer.step, summary, Path(cfg.run.out_dir) / "checkpoints"
            )
        finished = True
    finally:
        if trainer is not None:
            trainer.close()
        teardown_distributed(synchronize=finished)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="d2v.training.train", description="one data2vec training process")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except D2VError as exc:
        print(f"d2v train: error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
