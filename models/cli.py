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
        help="Hugging Face Data2VecText/Audio/Vision repo (base or task model)",
        description="Convert a transformers save_pretrained directory (or a hub id, downloaded when online) "
        "of Data2VecTextModel, Data2VecAudioModel or Data2VecVisionModel, or of one of their task models "
        "(...ForCTC, ...ForSequenceClassification, ...ForMaskedLM, ...ForImageClassification, ...), into a d2v "
        "checkpoint directory. Task models convert their base model; the heads are dropped and listed. Text "
        "repos bring tokenizer.json or vocab.json + merges.txt (the RoBERTa byte-level BPE is built from them).",
    )
    hf.add_argument("src", help="save_pretrained directory or hub id (e.g. facebook/data2vec-audio-base)")
    hf.add_argument("out", type=Path, help="checkpoint directory to write")
    hf.add_argument("--no-tokenizer", action="store_true", help="text: write the checkpoint without a tokenizer")
    hf.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at OUT")
    hf.set_defaults(func=_convert_hf)

    fs = sources.add_parser(
        "fairseq",
        help="fairseq data2vec 1.0 audio/text and data2vec 2.0 (audio, image, text) .pt checkpoints",
        description="Convert a fairseq data2vec checkpoint (Data2VecAudioModel, Data2VecTextModel, "
        "Data2VecMultiModel) into a d2v checkpoint directory. The file is read without running code from it. "
        "Text checkpoints need the fairseq dict.txt and the GPT-2 BPE files encoder.json and vocab.bpe.",
    )
    fs.add_argument("src", type=Path, help="fairseq checkpoint (.pt)")
    fs.add_argument("out", type=Path, help="checkpoint directory to write")
    fs.add_argument("--teacher", action="store_true", help="convert the EMA teacher (_ema) instead of the student")
    fs.add_argument(
        "--dict",
        dest="dict_dir",
        type=Path,
        help="text: directory with dict.txt, encoder.json and vocab.bpe (default: the checkpoint's directory)",
    )
    fs.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at OUT")
    fs.set_defaults(func=_convert_fairseq)


def _convert_hf(args: argparse.Namespace) -> int:
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())) and not args.overwrite:
        raise ConfigError(f"{args.out} exists and is not empty (pass --overwrite to replace it)")
    from d2v.models.convert.hf import convert_hf

    result = convert_hf(args.src, args.out, no_tokenizer=args.no_tokenizer)
    print(f"converted {result.architecture} ({result.modality}): its base model")
    if result.dropped:
        total = sum(d.tensors for d in result.dropped.values())
        print(f"dropped {total} tensors outside the base model (heads / poolers; embeddings do not use them):")
        for prefix, d in result.dropped.items():
            print(f"  {prefix}: {d.tensors} tensors, {d.parameters:,} parameters")
    else:
        print("dropped nothing: every tensor is part of the converted model")
    if result.tokenizer:
        print(f"tokenizer: {result.tokenizer} -> tokenizer.json")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.path}")
    return 0


def _convert_fairseq(args: argparse.Namespace) -> int:
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())) and not args.overwrite:
        raise ConfigError(f"{args.out} exists and is not empty (pass --overwrite to replace it)")
    from d2v.models.convert.fairseq import convert_fairseq

    path = convert_fairseq(args.src, args.out, teacher=args.teacher, dict_dir=args.dict_dir)
    _print_fairseq_summary(path)
    return 0


def _print_fairseq_summary(path: Path) -> None:
    from d2v.models.checkpoint import read_checkpoint_config

    config = read_checkpoint_config(path)
    model, source = config["model"], config["source"]
    teacher = "the EMA teacher" if source["weights"] == "teacher" else "the student"
    if source["weights"] == "student" and source["has_teacher"]:
        teacher += " (an EMA teacher is there too: --teacher)"
    print(f"converted {source['fairseq_model']} ({model['modality']}, data2vec {model['version']}): {teacher}")
    blocks, dim, top_k = model["transformer"]["depth"], model["transformer"]["dim"], config["embedding"]["top_k"]
    print(f"  {blocks} blocks (prenet {model['prenet_depth']}), dim {dim}, served top-K {top_k} (average_top_k_layers)")
    if source["dropped"]:
        print(f"  dropped (pretraining only): {', '.join(source['dropped'])}")
    for note in source["notes"]:
        print(f"  note: {note}")
    print(f"  sha256 {source['sha256']}")
    print(f"wrote {path}")
