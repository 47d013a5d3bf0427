"""``d2v convert``: argparse only at import time; the converter (torch) is imported when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from d2v.core.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser("convert", help="import a pretrained checkpoint into the project format")
    sources = convert.add_subparsers(dest="convert_source", metavar="SOURCE")
    convert.set_defaults(func=lambda args: convert.print_help() or 2)

    hf = sources.add_parser(
        "hf",
        help="Hugging Face Data2VecText/Audio/VisionModel",
        description="Convert a transformers save_pretrained directory (or a hub id, downloaded when online) "
        "of Data2VecTextModel, Data2VecAudioModel or Data2VecVisionModel into a d2v checkpoint directory.",
    )
    hf.add_argument("src", help="save_pretrained directory or hub id (e.g. facebook/data2vec-audio-base)")
    hf.add_argument("out", type=Path, help="checkpoint directory to write")
    hf.add_argument("--no-tokenizer", action="store_true", help="text: write the checkpoint without tokenizer.json")
    hf.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at OUT")
    hf.set_defaults(func=_convert_hf)


def _convert_hf(args: argparse.Namespace) -> int:
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())) and not args.overwrite:
        raise ConfigError(f"{args.out} exists and is not empty (pass --overwrite to replace it)")
    from d2v.models.convert_hf import convert_hf

    path = convert_hf(args.src, args.out, no_tokenizer=args.no_tokenizer)
    print(f"wrote {path}")
    return 0
