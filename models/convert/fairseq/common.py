"""What every fairseq converter shares: the checkpoint as plain data, named weight access, block mapping."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from d2v.core.errors import ConfigError
from d2v.models.config import TargetConfig

from .unpickle import Opaque, load_checkpoint, resolve_interpolations, to_plain


@dataclass
class FairseqCheckpoint:
    """A fairseq checkpoint read safely: ``cfg`` as plain (resolved) dicts, the student's tensors, and the
    EMA teacher's (``_ema``, keys relative to the module the EMA covers) when the file has one."""

    path: Path
    sha256: str
    cfg: dict[str, Any]
    state: dict[str, Tensor]
    ema: dict[str, Tensor] | None

    @property
    def model_cfg(self) -> dict[str, Any]:
        return self.cfg["model"]

    @property
    def name(self) -> str:
        return str(self.model_cfg.get("_name") or self.model_cfg.get("arch") or "")


def _tensors(obj: Any, where: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} is not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def read_checkpoint(path: str | os.PathLike) -> FairseqCheckpoint:
    """Unpickle ``path`` with the restricted unpickler and pick out ``cfg`` (or legacy ``args``), ``model``
    and the ``_ema`` teacher (top level in 2.0 / v1 audio, under ``encoder.`` in v1 text)."""
    path = Path(path)
    raw, sha = load_checkpoint(path)
    if not isinstance(raw, dict) or "model" not in raw:
        raise ConfigError(f"{path} is not a fairseq checkpoint (no 'model' state dict)")
    cfg = to_plain(raw.get("cfg"))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        args = to_plain(raw.get("args"))  # fairseq < 0.10: an argparse.Namespace with flat model fields
        if not isinstance(args, dict):
            raise ConfigError(f"{path} has neither a cfg with a 'model' section nor legacy args")
        cfg = {"model": {**args, "_name": args.get("arch")}, "task": args}
    cfg = resolve_interpolations(cfg)
    model = raw["model"]
    if not isinstance(model, dict):
        raise ConfigError(f"{path}: 'model' is not a state dict")
    ema = None
    for key in ("_ema", "encoder._ema"):
        if key in model:
            ema = _tensors(model[key], f"{path}: {key}")
    state = {k: v for k, v in model.items() if not k.endswith("_ema")}
    bad = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        kinds = {type(state[k]).name() if isinstance(state[k], Opaque) else type(state[k]).__name__ for k in bad}
        raise ConfigError(f"{path}: model entries {bad[:3]} are not tensors ({sorted(kinds)})")
    return FairseqCheckpoint(path, sha, cfg, state, ema)


class Weights:
    """fairseq tensors by name, with a clear error for a missing one; ``used`` records what was read."""

    def __init__(self, state: dict[str, Tensor], source: str) -> None:
        self.state = state
        self.source = source
        self.used: set[str] = set()

    def __call__(self, name: str) -> Tensor:
        if name not in self.state:
            raise ConfigError(f"{self.source}: checkpoint lacks {name!r}")
        self.used.add(name)
        return self.state[name].float()

    def has(self, name: str) -> bool:
        return name in self.state

    def pair(self, name: str) -> tuple[Tensor, Tensor]:
        return self(name + ".weight"), self(name + ".bias")

    def norm(self, name: str, dim: int) -> tuple[Tensor, Tensor]:
        """A LayerNorm's (weight, bias); ones/zeros when it has no affine parameters (``norm_affine=False``)."""
        if self.has(name + ".weight"):
            return self.pair(name)
        return torch.ones(dim), torch.zeros(dim)

    def unused(self, *, ignore: tuple[str, ...] = ()) -> list[str]:
        return sorted(k for k in self.state if k not in self.used and not k.startswith(ignore))


@dataclass
class Converted:
    """A converter's result: the project config, its state dict, preprocessing, embedding and notes."""

    config: Any  # Data2VecConfig
    state: dict[str, Tensor]
    preprocessing: Any
    embedding: Any  # EmbeddingConfig
    dropped: list[str] = field(default_factory=list)  # fairseq module prefixes not carried over
    notes: list[str] = field(default_factory=list)
    tokenizer: Any = None  # tokenizers.Tokenizer for text


def put_pair(dst: dict[str, Tensor], name: str, pair: tuple[Tensor, Tensor]) -> None:
    dst[name + ".weight"], dst[name + ".bias"] = pair


def put_block(dst: dict[str, Tensor], i: int, *, qkv: tuple[Tensor, Tensor], out, fc1, fc2, norm1, norm2) -> None:
    """Transformer block ``i`` from a fused (qkv weight [3D, D], qkv bias [3D]) and (weight, bias) pairs."""
    p = f"transformer.blocks.{i}."
    dst[p + "attn.qkv.weight"] = qkv[0]
    dst[p + "attn.q_bias"], dst[p + "attn.k_bias"], dst[p + "attn.v_bias"] = qkv[1].chunk(3)
    for name, pair in {"attn.proj": out, "mlp.fc1": fc1, "mlp.fc2": fc2, "norm1": norm1, "norm2": norm2}.items():
        put_pair(dst, p + name, pair)


def put_fairseq_layers(dst: dict[str, Tensor], w: Weights, prefix: str, depth: int) -> None:
    """fairseq ``TransformerSentenceEncoderLayer`` / ``TransformerEncoderLayer`` (separate q/k/v projections,
    ``self_attn_layer_norm``, ``fc1``/``fc2``, ``final_layer_norm``) at ``{prefix}{i}.`` -> blocks 0..depth-1."""
    for i in range(depth):
        p = f"{prefix}{i}."
        q, k, v = (w.pair(f"{p}self_attn.{name}_proj") for name in "qkv")
        put_block(
            dst,
            i,
            qkv=fuse_qkv(q, k, v),
            out=w.pair(p + "self_attn.out_proj"),
            fc1=w.pair(p + "fc1"),
            fc2=w.pair(p + "fc2"),
            norm1=w.pair(p + "self_attn_layer_norm"),
            norm2=w.pair(p + "final_layer_norm"),
        )


def fuse_qkv(q: tuple[Tensor, Tensor], k: tuple[Tensor, Tensor], v: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return torch.cat([q[0], k[0], v[0]]), torch.cat([q[1], k[1], v[1]])


def require(cfg: dict[str, Any], key: str, expected: Any, where: str, why: str) -> None:
    """Refuse a configuration the project's architecture cannot reproduce exactly."""
    value = cfg.get(key, expected)
    if value != expected:
        raise ConfigError(f"{where}: {key}={value!r} is not supported ({why}); expected {expected!r}")


def target_config(cfg: dict[str, Any], depth: int, notes: list[str]) -> TargetConfig:
    """The recipe's target construction (spec §1.3) from the data2vec flags; K from average_top_k_layers."""
    top_k = int(cfg.get("average_top_k_layers", 8))
    if not 1 <= top_k <= depth:
        raise ConfigError(f"average_top_k_layers={top_k} is outside [1, {depth}] for this {depth}-layer model")
    layer = "none"
    if cfg.get("instance_norm_target_layer"):
        layer = "instance"
    elif cfg.get("layer_norm_target_layer"):
        layer = "layer"
    for flag in ("batch_norm_target_layer", "group_norm_target_layer"):
        if cfg.get(flag):
            notes.append(f"{flag} (a training-target option) has no project equivalent; targets use {layer!r}")
    final = "layer" if cfg.get("layer_norm_targets") else ("instance" if cfg.get("instance_norm_targets") else "none")
    source = "block" if cfg.get("end_of_block_targets") else "ffn"
    return TargetConfig(top_k=top_k, layer_norm=layer, final_norm=final, source=source)


def parse_conv_spec(text: Any, where: str) -> tuple[tuple[int, int, int], ...]:
    """fairseq's conv feature-extractor spec, e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``, which fairseq
    ``eval``s; here only list/tuple literals of ints combined with ``+`` and ``*`` are accepted."""
    import ast

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = value(node.left), value(node.right)
            if not isinstance(left, list) or type(right) is not int or not 0 <= right <= 64:
                raise ValueError("only list * small int")
            return left * right
        raise ValueError(f"unsupported {type(node).__name__}")

    try:
        layers = value(ast.parse(str(text), mode="eval").body)
        spec = tuple((int(c), int(k), int(s)) for c, k, s in layers)
    except (SyntaxError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: cannot read the conv layer spec {text!r} ({exc})") from None
    if not spec:
        raise ConfigError(f"{where}: empty conv layer spec")
    return spec


def put_feature_extractor(
    dst: dict[str, Tensor], w: Weights, prefix: str, n_layers: int, mode: str, bias: bool
) -> None:
    """fairseq ``ConvFeatureExtractionModel`` -> ``front_end.feature_extractor``: each layer is
    Sequential(conv, dropout, norm, GELU); the norm is Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)
    in ``layer_norm`` mode and an Fp32GroupNorm on the first layer only in ``default`` (group norm) mode."""
    for i in range(n_layers):
        src, ours = f"{prefix}conv_layers.{i}.", f"front_end.feature_extractor.{i}."
        dst[ours + "conv.weight"] = w(src + "0.weight")
        if bias:
            dst[ours + "conv.bias"] = w(src + "0.bias")
        if mode == "layer_norm":
            put_pair(dst, ours + "norm", w.pair(src + "2.1"))
        elif i == 0:
            put_pair(dst, ours + "norm", w.pair(src + "2"))


def extractor_mode(value: Any, where: str) -> str:
    """fairseq's ``extractor_mode`` (``default`` = group norm on the first layer) -> the project's name."""
    modes = {"layer_norm": "layer_norm", "default": "group_norm"}
    if value not in modes:
        raise ConfigError(f"{where}: extractor_mode {value!r} is not supported (layer_norm or default)")
    return modes[value]
