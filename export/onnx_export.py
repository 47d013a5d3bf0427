"""The ONNX graph of one exported model: a wrapper around ``extract_embeddings`` and the exporter call.

``EmbeddingGraph`` is the only thing exported; it calls ``d2v.models.embedding.extract_embeddings`` (the
project's one definition of the top-K layer-averaged representation) and adds nothing but dtype casts and
the optional L2 normalisation of the pooled vectors. Names and axes come from ``d2v.core.manifest``.

Exporter choice (measured with torch 2.13 on the tiny test models, 2 cores): the dynamo exporter (default,
opset >= 18) exports text/audio/image in about 4-12 s with correct dynamic batch/length axes and the audio
frame count computed in-graph from the sample mask. The legacy TorchScript exporter (``dynamo=False``, kept
selectable) fails on this model code (``F.layer_norm(x, x.shape[-1:])`` in the embedding extraction
becomes an unexportable ``Gather`` on a shape). Weights always go to external data (``model.onnx.data``)
beside the graph and ``onnx.checker`` (full check) runs on the saved file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2v.core.contract import (
    CLS_OUTPUT,
    INPUT_NAMES,
    MEAN_OUTPUT,
    TOKEN_MASK_OUTPUT,
    TOKENS_OUTPUT,
    TOP_K_INPUT,
    output_names,
)
from d2v.core.errors import ConfigError, InternalError
from d2v.core.manifest import TensorSpec
from d2v.export.onnx_files import save_with_external_data

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 14, 21, 18
# The symbolic axis names of docs/contracts.md.
LENGTH_AXIS = {"text": "sequence", "audio": "samples"}


def check_opset(opset: int, dynamo: bool) -> int:
    lo = 18 if dynamo else MIN_OPSET
    if not lo <= opset <= MAX_OPSET:
        raise ConfigError(
            f"unsupported ONNX opset {opset}: this exporter supports opsets {lo}..{MAX_OPSET} "
            f"({'dynamo' if dynamo else 'legacy'} exporter; default {DEFAULT_OPSET})"
        )
    return opset


@dataclass
class GraphOptions:
    top_k: int
    norm: str = "layer"
    pooling: str = "mean"
    normalize: bool = False  # L2-normalise the pooled outputs in-graph
    dynamic_top_k: bool = False  # add the optional ``d2v_top_k`` input


class EmbeddingGraph(nn.Module):
    """inputs (contract names) -> (tokens, token_mask int64, mean[, cls]) for one modality."""

    def __init__(self, model: nn.Module, modality: str, opts: GraphOptions) -> None:
        super().__init__()
        from d2v.models.config import EmbeddingConfig

        self.model = model
        self.modality = modality
        self.opts = opts
        self.cfg = EmbeddingConfig(top_k=opts.top_k, norm=opts.norm, pooling=opts.pooling)
        self.has_cls = CLS_OUTPUT in output_names(modality)
        self.input_names = list(INPUT_NAMES[modality]) + ([TOP_K_INPUT] if opts.dynamic_top_k else [])
        self.output_names = list(output_names(modality))

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from d2v.models.embedding import extract_embeddings

        inputs = args[0]
        mask = args[1] if self.modality != "image" else None
        top_k = args[-1] if self.opts.dynamic_top_k else None
        emb = extract_embeddings(self.model, inputs, mask, self.cfg, top_k=top_k)
        mean, cls = emb.mean, emb.cls
        if self.opts.normalize:
            mean = nn.functional.normalize(mean, dim=-1)
            cls = nn.functional.normalize(cls, dim=-1) if cls is not None else None
        out = (emb.tokens, emb.token_mask.to(torch.int64), mean)
        if self.has_cls:
            if cls is None:
                raise InternalError(f"{self.modality} model returned no CLS embedding")
            out = (*out, cls)
        return out


def _dynamic_axes(modality: str, graph: EmbeddingGraph) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in INPUT_NAMES[modality]:
        axes[name] = {0: "batch"}
        if modality in LENGTH_AXIS:
            axes[name][1] = LENGTH_AXIS[modality]
    frames = "sequence" if modality == "text" else "frames"
    axes[TOKENS_OUTPUT] = {0: "batch"} if modality == "image" else {0: "batch", 1: frames}
    axes[TOKEN_MASK_OUTPUT] = dict(axes[TOKENS_OUTPUT])
    axes[MEAN_OUTPUT] = {0: "batch"}
    if graph.has_cls:
        axes[CLS_OUTPUT] = {0: "batch"}
    return axes


def _dynamic_shapes(modality: str, graph: EmbeddingGraph) -> tuple[Any, ...]:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    shapes: list[Any] = []
    length = Dim(LENGTH_AXIS[modality], min=2, max=1 << 22) if modality in LENGTH_AXIS else None
    for _ in INPUT_NAMES[modality]:
        shapes.append({0: batch, 1: length} if length is not None else {0: batch})
    if graph.opts.dynamic_top_k:
        shapes.append(None)
    return (tuple(shapes),)  # forward(*args): one positional parameter holding all inputs


def export_graph(
    graph: EmbeddingGraph,
    example: dict[str, torch.Tensor],
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
) -> float:
    """Write ``path`` (+ ``path.data``), check it, return the export time in seconds."""
    import onnx

    check_opset(opset, dynamo)
    graph.eval()  # the outermost module: the legacy exporter restores the mode it finds
    args = tuple(example[n] for n in graph.input_names)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            if dynamo:
                program = torch.onnx.export(
                    graph,
                    args,
                    input_names=graph.input_names,
                    output_names=graph.output_names,
                    opset_version=opset,
                    dynamo=True,
                    dynamic_shapes=_dynamic_shapes(graph.modality, graph),
                    optimize=True,
                )
                program.save(str(path), external_data=True)
                _name_output_axes(path, graph)
            else:
                torch.onnx.export(
                    graph,
                    args,
                    str(path),
                    input_names=graph.input_names,
                    output_names=graph.output_names,
                    opset_version=opset,
                    dynamo=False,
                    dynamic_axes=_dynamic_axes(graph.modality, graph),
                    do_constant_folding=True,
                )
                _externalize(path)
    except ConfigError:
        raise
    except Exception as exc:
        raise InternalError(f"ONNX export failed ({'dynamo' if dynamo else 'legacy'} exporter): {exc}") from exc
    seconds = time.perf_counter() - start
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise InternalError(f"exported graph fails onnx.checker: {exc}") from exc
    log.info(
        "exported %s in %.1f s (%s exporter, opset %d)", path.name, seconds, "dynamo" if dynamo else "legacy", opset
    )
    return seconds


def _name_output_axes(path: Path, graph: EmbeddingGraph) -> None:
    """Give derived output axes the contract's names (dynamo writes audio frames as a formula of samples)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    axes = _dynamic_axes(graph.modality, graph)
    for out in model.graph.output:
        for index, name in axes.get(out.name, {}).items():
            dim = out.type.tensor_type.shape.dim[index]
            if not dim.HasField("dim_value"):
                dim.dim_param = name
    onnx.save_model(model, str(path))  # graph only: the external data references are kept as they are


def _externalize(path: Path) -> None:
    """Move all weights to ``<file>.data`` beside the graph (the legacy exporter inlines small models)."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    save_with_external_data(model, path)


def graph_io(path: Path) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """The real inputs / outputs of an ONNX file as manifest ``TensorSpec`` (dtype + symbolic shape)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def spec(value_info) -> TensorSpec:
        t = value_info.type.tensor_type
        dims: list[int | str] = []
        for i, d in enumerate(t.shape.dim):
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"dim{i}"))
        return TensorSpec(dtype=str(helper.tensor_dtype_to_np_dtype(t.elem_type)), shape=dims)

    inits = {i.name for i in model.graph.initializer}
    inputs = {v.name: spec(v) for v in model.graph.input if v.name not in inits}
    outputs = {v.name: spec(v) for v in model.graph.output}
    return inputs, outputs
