"""``d2v serve`` with provisioning: the server's own flags (``d2v.server.cli``) plus two conveniences that
run other ``d2v`` commands in a subprocess before serving, so the serving process stays torch-free:

* ``--quickstart-if-empty`` runs ``d2v quickstart`` when the store holds no model;
* ``--model`` accepts a Hugging Face data2vec model (a ``save_pretrained`` directory or a hub id such as
  ``facebook/data2vec-text-base``), converted with ``d2v convert hf`` and exported with ``d2v export`` into
  ``$D2V_HOME/cache/hf/<name>-<hash>/`` once, then reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from d2v.core.errors import ConfigError, NotFound
from d2v.core.manifest import MANIFEST_FILE
from d2v.core.paths import default_cache, store_has_models
from d2v.server import cli as server_cli

HF_MODEL_TYPES = ("data2vec-text", "data2vec-audio", "data2vec-vision")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


register_bench = server_cli.register_bench  # d2v bench serve needs no provisioning


def register(subparsers: argparse._SubParsersAction) -> None:
    p = server_cli.register(subparsers)
    p.add_argument(
        "--quickstart-if-empty",
        action="store_true",
        help="when the store holds no model, build the default ones first (d2v quickstart; a few minutes)",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    settings = server_cli.settings_from_args(args)
    if args.quickstart_if_empty and not settings.models:
        quickstart_if_empty(settings.store)
    if settings.models:
        resolved = [resolve_model(entry, settings.store) for entry in settings.models]
        if resolved != settings.models:
            settings = settings.model_copy(update={"models": resolved})
    return server_cli.run_server(settings)


def run_d2v(argv: list[str], what: str) -> None:
    """Run ``d2v ARGV`` in a child interpreter (torch stays out of the server process)."""
    print(f"d2v serve: {what}: d2v {' '.join(argv)}", file=sys.stderr, flush=True)
    rc = subprocess.call([sys.executable, "-m", "d2v", *argv])
    if rc != 0:
        raise ConfigError(f"{what} failed (d2v {argv[0]} exited with status {rc})")


def quickstart_if_empty(store: Path) -> None:
    """``d2v quickstart --store STORE`` when the store holds no exported model yet."""
    if store_has_models(store):
        return
    run_d2v(["quickstart", "--store", str(store)], f"the model store {store} is empty; building the default models")


def _hf_model_type(path: Path) -> str | None:
    """``model_type`` of a Hugging Face ``save_pretrained`` directory holding a data2vec model, else None."""
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if model_type in HF_MODEL_TYPES else None


def _cache_key(src: str, local: Path | None) -> str:
    """Directory name for a converted model: its name plus a hash of where it came from (and, for a local
    directory, the sizes and times of its files, so an edited model is converted again)."""
    h = hashlib.sha256(src.encode())
    if local is not None:
        h.update(str(local.resolve()).encode())
        for f in sorted(local.iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    name = re.sub(r"[^\w.-]", "-", (local.resolve().name if local is not None else src.rsplit("/", 1)[-1]))
    return f"{name}-{h.hexdigest()[:10]}"


def resolve_model(entry: str, store: Path) -> str:
    """A store name or export directory stays as it is; a Hugging Face data2vec model (local directory or hub
    id) becomes the export directory of its converted copy, built on first use."""
    path = Path(entry).expanduser()
    if (path / MANIFEST_FILE).is_file() or (store / entry / MANIFEST_FILE).is_file():
        return entry
    if path.is_dir():
        if _hf_model_type(path) is None:
            raise NotFound(
                f"model {entry!r}: the directory has neither {MANIFEST_FILE} (a d2v export) nor a Hugging Face "
                f"config.json with model_type {' / '.join(HF_MODEL_TYPES)}"
            )
        local = path
    elif _HUB_ID.match(entry):
        local = None
    else:
        raise NotFound(f"model {entry!r}: neither a model directory, a model in the store {store}, nor a hub id")
    cache = default_cache("hf", _cache_key(entry, local))
    export_dir = cache / "model"
    if (export_dir / MANIFEST_FILE).is_file():
        return str(export_dir)
    checkpoint = cache / "checkpoint"
    name = re.sub(r"[^\w.-]", "-", (local.resolve().name if local is not None else entry.rsplit("/", 1)[-1]))
    where = str(local) if local is not None else f"the Hugging Face Hub ({entry})"
    try:
        run_d2v(["convert", "hf", str(local or entry), str(checkpoint), "--overwrite"], f"converting {where}")
    except Exception as exc:
        hint = "" if local is not None else " (offline? download it where the Hub is reachable, pass the directory)"
        raise NotFound(f"model {entry!r}: could not convert {where}{hint}: {getattr(exc, 'message', exc)}") from None
    run_d2v(
        ["export", str(checkpoint), str(export_dir), "--name", name, "--variants", "none", "--overwrite"],
        f"exporting {name}",
    )
    return str(export_dir)
