"""fairseq as a test oracle. This file runs INSIDE ``.venv-fairseq`` (fairseq-fixed 0.12.3.1, CPU torch), as a
subprocess started by ``client.py``; the project's test environment never imports it, and project code
never imports fairseq. ``patches.setup()`` (re-exported here) makes ``examples.data2vec`` importable.

Protocol: ``python harness.py REQUEST.json`` (one request) or ``python harness.py --serve`` (request paths
as lines on stdin; ``client.py`` keeps one such process per test session). A request names a ``command`` and
its ``params``; input tensors come in ``inputs`` (a safetensors file), output tensors go to ``outputs``
(safetensors) and the JSON-able result to ``result`` (a JSON file). See ``README.md`` beside this file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

from patches import setup  # this file's folder is sys.path[0] when it runs as a script

__all__ = ["build", "extract_layers", "load", "save_checkpoint", "setup", "use_teacher"]


# ------------------------------------------------------------------------------------------------- models
KINDS = ("audio_v1", "text_v1", "audio_v2", "image_v2", "text_v2")


def _deep_update(cfg, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict):
            _deep_update(cfg[key], value)
        else:
            cfg[key] = value


def root_config(kind: str, overrides: dict, task: dict | None = None):
    """The OmegaConf root a fairseq run has (``model`` plus the sections its ``II(...)`` fields point at)."""
    from omegaconf import OmegaConf

    fs = setup()
    model_cls = {"audio_v1": fs.Data2VecAudioConfig, "text_v1": fs.Data2VecTextConfig}.get(kind, fs.Data2VecMultiConfig)
    root = OmegaConf.create(
        {
            "common": {"seed": 1},
            "optimization": {"max_update": 1000},
            "task": {"tokens_per_sample": 512, "max_source_positions": 512, **(task or {})},
            "model": OmegaConf.structured(model_cls),
        }
    )
    root.model._name = {"audio_v1": "data2vec_audio", "text_v1": "data2vec_text"}.get(kind, "data2vec_multi")
    if kind == "text_v1":  # TransformerConfig points its decoder dims at `model.decoder`, absent here
        decoder = root.model.transformer.decoder
        decoder.input_dim = decoder.output_dim = "${model.transformer.decoder.embed_dim}"
    if kind.endswith("_v2"):
        root.model.supported_modality = kind.split("_")[0].upper()
    _deep_update(root.model, overrides)
    return root


def text_task(dict_path: str | None):
    """What the text models read from a fairseq masked-LM task: the dictionary (with ``<mask>`` appended)."""
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(dict_path)
    dictionary.add_symbol("<mask>")
    return types.SimpleNamespace(source_dictionary=dictionary, cfg=types.SimpleNamespace(data=""))


def build(kind: str, overrides: dict, *, seed: int = 0, dict_path: str | None = None, task: dict | None = None):
    """A random fairseq model of ``kind`` (eval mode) built from ``root_config(kind, overrides)``; for text
    kinds ``dict_path`` is the fairseq ``dict.txt``. Returns ``(model, root_cfg)``."""
    import torch

    fs = setup()
    root = root_config(kind, overrides, task)
    torch.manual_seed(seed)
    if kind == "audio_v1":
        model = fs.Data2VecAudioModel.build_model(root.model)
    elif kind == "text_v1":
        model = fs.Data2VecTextModel.build_model(root.model, text_task(dict_path))
        model.encoder.target_model = None  # read (never set) by its upgrade_state_dict_named on loading
    else:
        task = text_task(dict_path) if kind == "text_v2" else None
        model = fs.Data2VecMultiModel(root.model, [root.model.supported_modality], task=task)
    model.set_num_updates(1)  # v1 models create their EMA teacher lazily, here
    return model.eval(), root


def perturb_teacher(model, seed: int, scale: float = 0.05) -> None:
    """Make the stored EMA teacher differ from the student (a fresh model's teacher is an exact copy)."""
    import torch

    ema = model.encoder.ema if hasattr(model, "encoder") and hasattr(model.encoder, "ema") else model.ema
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in ema.fp32_params.items():
        if torch.is_floating_point(tensor) and "alibi_scale" not in name and "fixed_positional" not in name:
            tensor.add_(torch.randn(tensor.shape, generator=gen) * scale)
    ema.restore(ema.fp32_params)


def randomize_alibi_scales(model, seed: int) -> None:
    """ALiBi scales start at 1 everywhere; random ones (in [0.5, 1.5)) make their layout observable."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for encoder in getattr(model, "modality_encoders", {}).values():
        if encoder.alibi_scale is not None:
            encoder.alibi_scale.data.copy_(0.5 + torch.rand(encoder.alibi_scale.shape, generator=gen))


def ema_prefix(kind: str, root) -> str:
    """Where the ``_ema`` entries sit in the model's own state dict."""
    if kind == "audio_v1":
        return "encoder."
    if kind == "text_v1":
        return "encoder.sentence_encoder."
    return "blocks." if root.model.ema_encoder_only else ""


def use_teacher(model, kind: str, root) -> None:
    """Load the EMA weights over the student, as a user extracting features from the teacher would; the
    model keeps no EMA afterwards (strict loading checks that every ``_ema`` entry has a place)."""
    state = model.state_dict()
    owner = model.encoder if kind == "text_v1" else model
    ema = state.pop("encoder._ema" if kind == "text_v1" else "_ema")
    owner.ema = None
    prefix = ema_prefix(kind, root)
    state.update({prefix + k: v for k, v in ema.items()})
    model.load_state_dict(state, strict=True)


def save_checkpoint(model, root, path: str, *, cfg_format: str = "omegaconf", legacy: bool = False) -> None:
    """The dict fairseq's trainer writes (``cfg``, ``model`` with ``_ema``, optimizer history, extra state)
    through fairseq's own ``torch_persistent_save``. ``cfg_format``: ``container`` is what fairseq 0.12's
    trainer writes (plain containers), ``omegaconf`` the DictConfig that ``load_checkpoint_to_cpu`` turns it
    into, which is what a checkpoint loaded and saved again (as released ones were, optimizer state
    stripped) holds."""
    import torch
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(root, resolve=True, enum_to_str=True)
    if cfg_format == "omegaconf":
        cfg = OmegaConf.create(cfg)
    state = {
        "args": None,
        "cfg": cfg,
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "ModelCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 1,
            }
        ],
        "task_state": {},
        "extra_state": {"metrics": {}, "previous_training_time": 1.0, "train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }
    if legacy:
        with open(path, "wb") as f:
            torch.save(state, f, _use_new_zipfile_serialization=False)
    else:
        checkpoint_utils.torch_persistent_save(state, path)


def load(kind: str, path: str, *, dict_path: str | None = None, teacher: bool = False):
    """Rebuild a model from a checkpoint written by ``save_checkpoint`` (fairseq's own loader reads it)."""
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    model_cfg = state["cfg"]["model"]
    overrides = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else model_cfg
    overrides = {k: v for k, v in overrides.items() if k not in ("_name", "supported_modality")}
    model, root = build(kind, overrides, dict_path=dict_path)
    model.load_state_dict(state["model"], strict=True)
    if teacher:
        use_teacher(model, kind, root)
    return model.eval(), root


# ------------------------------------------------------------------------------------------------ forward
def _blocks(model, kind: str) -> list:
    """The Transformer blocks in order (v2: the modality prenet blocks first, then the shared ones)."""
    if kind == "audio_v1":
        return list(model.encoder.layers)
    if kind == "text_v1":
        return list(model.encoder.sentence_encoder.layers)
    encoder = next(iter(model.modality_encoders.values()))
    return list(encoder.context_encoder.blocks) + list(model.blocks)


def extract_layers(model, kind: str, source, padding_mask=None, precomputed_mask=None) -> dict:
    """fairseq's inference forward (``extract_features``, mask off unless ``precomputed_mask``) with every
    block's output and FFN output captured by forward hooks, batch-first: ``block_{i}`` / ``ffn_{i}``
    [B, T, D] plus ``x`` (what ``extract_features`` returns; v2 without extra tokens). With
    ``precomputed_mask`` (v2), only the kept tokens are encoded, in fairseq's order: ``ids_keep`` [B, K]
    gives their original indices (``argsort`` of the mask, which need not keep the original order)."""
    import torch

    captured: list = []
    time_major = kind in ("audio_v1", "text_v1")

    def hook(module, args, output):
        x, second = output
        if kind == "audio_v1":
            second = second[1]  # (attn, fc2 output)
        if time_major:
            x, second = x.transpose(0, 1), second.transpose(0, 1)
        captured.append((x, second))

    handles = [blk.register_forward_hook(hook) for blk in _blocks(model, kind)]
    try:
        with torch.no_grad():
            if kind == "audio_v1":
                out = model.extract_features(source, padding_mask, mask=False)
                x = out["x"]
            elif kind == "text_v1":
                x, _ = model.encoder.extract_features(source)
            else:
                out = model(
                    source,
                    mode=None,
                    padding_mask=padding_mask,
                    mask=precomputed_mask is not None,
                    features_only=True,
                    precomputed_mask=precomputed_mask,
                    force_remove_masked=precomputed_mask is not None,
                )
                x = out["x"]
                if precomputed_mask is not None:  # the kept tokens' original indices, in fairseq's order
                    ids_keep = out["mask"].ids_keep
                    captured_ids = ids_keep[..., 0] if ids_keep.ndim == 3 else ids_keep
    finally:
        for handle in handles:
            handle.remove()
    # wav2vec2's encoder pads T to a multiple of 2 inside; its extra frame is dropped again here
    length = x.shape[1] if kind == "audio_v1" else None
    result = {"x": x}
    if precomputed_mask is not None:
        result["ids_keep"] = captured_ids
    for i, (block, ffn) in enumerate(captured):
        result[f"block_{i}"], result[f"ffn_{i}"] = block[:, :length], ffn[:, :length]
    return result


def encode_text(texts: list[str], encoder_json: str, vocab_bpe: str, dict_path: str) -> list[list[int]]:
    """fairseq's own text -> ids: GPT-2 BPE, then the dictionary (RoBERTa's ``<s> ... </s>``)."""
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig

    bpe = GPT2BPE(GPT2BPEConfig(gpt2_encoder_json=encoder_json, gpt2_vocab_bpe=vocab_bpe))
    dictionary = text_task(dict_path).source_dictionary
    out = []
    for text in texts:
        line = "<s> " + bpe.encode(text) + " </s>"
        out.append(dictionary.encode_line(line, append_eos=False, add_if_not_exist=False).long().tolist())
    return out


# ------------------------------------------------------------------------------------------------ protocol
def _command_build(params: dict, inputs: dict) -> tuple[dict, dict]:
    model, root = build(
        params["kind"],
        params.get("overrides", {}),
        seed=params.get("seed", 0),
        dict_path=params.get("dict_path"),
        task=params.get("task"),
    )
    randomize_alibi_scales(model, params.get("seed", 0) + 2)
    if params.get("perturb_teacher", True):
        perturb_teacher(model, params.get("seed", 0) + 1)
    save_checkpoint(
        model,
        root,
        params["path"],
        cfg_format=params.get("cfg_format", "omegaconf"),
        legacy=params.get("legacy", False),
    )
    return {"num_parameters": sum(p.numel() for p in model.parameters())}, {}


def _command_forward(params: dict, inputs: dict) -> tuple[dict, dict]:
    import torch

    kind = params["kind"]
    model, _ = load(kind, params["path"], dict_path=params.get("dict_path"), teacher=params.get("teacher", False))
    source, padding_mask, mask = inputs["source"], inputs.get("padding_mask"), inputs.get("precomputed_mask")
    padding_mask = None if padding_mask is None else padding_mask.bool()
    if not params.get("each_alone"):
        out = extract_layers(model, kind, source, padding_mask, None if mask is None else mask.bool())
        return {"num_layers": sum(k.startswith("block_") for k in out)}, out
    # Every row on its own, cut to its real length (what the item gives unbatched), zero-padded back to the
    # longest row so the result has the batch's layout.
    rows = []
    for r in range(source.shape[0]):
        length = source.shape[1] if padding_mask is None else int((~padding_mask[r]).sum())
        rows.append(extract_layers(model, kind, source[r : r + 1, :length]))
    out = {}
    for key in rows[0]:
        longest = max(row[key].shape[1] for row in rows)
        out[key] = torch.cat(
            [torch.nn.functional.pad(row[key], (0, 0, 0, longest - row[key].shape[1])) for row in rows]
        )
    return {"num_layers": sum(k.startswith("block_") for k in out)}, out


def _command_encode_text(params: dict, inputs: dict) -> tuple[dict, dict]:
    ids = encode_text(params["texts"], params["encoder_json"], params["vocab_bpe"], params["dict_path"])
    return {"ids": ids}, {}


def _command_call(params: dict, inputs: dict) -> tuple[dict, dict]:
    """Run ``params["function"]`` from the file ``params["file"]`` as ``fn(harness, inputs, params)``."""
    spec = importlib.util.spec_from_file_location("fairseq_oracle_user", params["file"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = getattr(module, params["function"])(sys.modules[__name__], inputs, params.get("params", {}))
    tensors = {k: v for k, v in result.items() if hasattr(v, "shape")}
    return {k: v for k, v in result.items() if k not in tensors}, tensors


COMMANDS = {
    "build": _command_build,
    "forward": _command_forward,
    "encode_text": _command_encode_text,
    "call": _command_call,
}


def handle(request_path: str) -> None:
    """Serve one request file (see the module docstring)."""
    from safetensors.torch import load_file, save_file

    request = json.loads(Path(request_path).read_text())
    inputs = load_file(request["inputs"]) if request.get("inputs") else {}
    result, tensors = COMMANDS[request["command"]](request.get("params", {}), inputs)
    if request.get("outputs"):
        tensors = {
            k: (v.detach().float() if v.is_floating_point() else v).clone().contiguous() for k, v in tensors.items()
        }
        save_file(tensors, request["outputs"])
    Path(request["result"]).write_text(json.dumps(result))


DONE = "@@fairseq-oracle@@"


def serve() -> None:
    """Requests as lines on stdin (one request-file path each), until stdin closes; after each, one line
    ``DONE ok`` or ``DONE error`` on stdout (the error's traceback goes into the result file). Importing
    fairseq takes seconds; a test session pays it once."""
    import traceback

    for line in sys.stdin:
        request_path = line.strip()
        if not request_path:
            continue
        try:
            handle(request_path)
            status = "ok"
        except Exception:
            result = json.loads(Path(request_path).read_text())["result"]
            Path(result).write_text(json.dumps({"__error__": traceback.format_exc()}))
            status = "error"
        print(DONE, status, flush=True)


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    setup()
    if argv == ["--serve"]:
        serve()
    else:
        handle(argv[0])


if __name__ == "__main__":
    sys.modules.setdefault("harness", sys.modules[__name__])
    main(sys.argv[1:])
