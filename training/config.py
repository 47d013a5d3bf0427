"""Training configuration: one dataclass per concern, loaded from a recipe YAML plus dotted overrides.

``load_config("base-audio-v1.yaml", ["optim.lr=5e-4"])`` reads the YAML (a path or a bundled recipe name),
applies the overrides to the raw mapping, then converts it into ``TrainConfig`` with the project's one strict
converter (``d2v.core.config.from_dict``): every error is a ``ConfigError`` naming the dotted field
(``optim.lr: expected float, got 'fast' (str)``). Unknown keys are errors too (a typo must not silently become
a default). The ``model`` and ``preprocessing`` sections are plain mappings here; they are checked against
``d2v.models`` dataclasses when the model is built (``resolve_model_config``), still naming the dotted field.

Torch-free (yaml + stdlib), so ``d2v train --help`` and config errors stay fast.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from d2v.core.config import from_dict, to_dict
from d2v.core.errors import ConfigError, NotFound

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass
class DataConfig:
    """Where the data is and how it is cut into batches (per process, per micro-step)."""

    path: str = ""  # directory tree, manifest (.tsv / .jsonl / .txt list of paths) or text corpus file
    batch_size: int = 8  # per process and micro-step; global batch = batch_size * grad_accum * world size
    # Per-process budget of one micro-batch in input units (audio samples, text tokens with padding), fairseq
    # ``dataset.max_tokens``: items sorted by length fill batches until longest x count would exceed it, and
    # ``batch_size`` is not used. 0 = fixed batches of ``batch_size`` random items. Audio and text only.
    max_tokens: int = 0
    num_workers: int = 0
    shuffle: bool = True
    # audio: random crop to at most max_seconds; batches cropped to the shortest item (no padding)
    max_seconds: float = 2.0
    min_seconds: float = 0.1
    max_file_seconds: float = 600.0  # longer files are skipped (they would be decoded whole to crop a window)
    # image: [colour jitter] + random resized crop + horizontal flip (size and normalisation: preprocessing)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    color_jitter: float = 0.0  # brightness = contrast = saturation strength (data2vec_vision: 0.4); 0 = off
    # text: a tokenizer.json, or "" to train a byte-level BPE of ``vocab_size`` on the corpus
    tokenizer: str = ""
    vocab_size: int = 1000
    block_size: int = 128  # tokens per training block, including <s>
    # fairseq ``task.sample_break_mode``: ``none`` = the concatenated corpus cut into full blocks (data2vec 2.0);
    # ``complete_doc`` = blocks never cross a document (data2vec v1 text), so they vary in length and are padded
    text_blocks: Literal["none", "complete_doc"] = "none"
    text_field: str = "text"  # JSONL key holding the text


@dataclass
class MaskConfig:
    """How the student's input is masked (spec §2). ``kind`` picks the generator of ``d2v.models.masking``."""

    kind: Literal["span", "block_1d", "block_2d", "random", "text_span", "bert", "beit"] = "span"
    prob: float = 0.65  # span/text_span: start probability x length; block/random: masked fraction R
    length: int = 10  # span length (span, text_span) or block size B (block_1d/2d)
    adjust: float = 0.0  # block masking A (mask_prob_adjust)
    inverse: bool = False  # block_2d: sample the kept region (data2vec 2.0 images)
    min_masks: int = 1
    # span: cut every row of a batch to the batch's smallest masked count (fairseq ``require_same_masks``)
    require_same_masks: bool = True
    num_patches: int = 120  # beit: masked patches per image
    min_block_patches: int = 16  # beit
    max_block_patches: int | None = None  # beit (None = all patches)


@dataclass
class EMASchedule:
    """Teacher decay: linear from ``tau0`` to ``tau_end`` over ``anneal_steps`` updates, then constant (spec §1.1).

    ``rules`` picks which parts the teacher averages vs copies from the student (``d2v.models.ema.ema_preset``);
    ``auto`` = the recipe of this modality and version (``v1_vision`` for images).
    """

    tau0: float = 0.999
    tau_end: float = 0.9999
    anneal_steps: int = 0  # 0 = run.max_steps (fairseq default: optimization.max_update)
    rules: Literal[
        "auto", "v1_audio", "v1_audio_audioset", "v1_text", "v1_vision", "v2_audio", "v2_image", "v2_text"
    ] = "auto"


@dataclass
class CollapseConfig:
    """Collapse guard (spec §1.5): warn (and optionally stop) when the stds fall under the thresholds."""

    min_target_std: float = 0.1
    min_pred_std: float = 0.01
    check_after_step: int = 5000
    stop: bool = False


@dataclass
class ObjectiveConfig:
    """The data2vec objective: v1 (mask embedding, regression head) or v2 (masked tokens removed, decoder).

    Target construction (top-K, per-layer and final norms, block vs FFN output) is part of the model config
    (``model.targets``), since it also defines ``norm="target"`` embeddings.
    """

    version: Literal["v1", "v2"] = "v1"
    clone_batch: int = 1  # v2: masked copies per sample sharing one teacher pass (M)
    mask: MaskConfig = field(default_factory=MaskConfig)
    ema: EMASchedule = field(default_factory=EMASchedule)
    loss_beta: float = 0.0  # 0 = MSE, else smooth-L1 with this beta
    # per-position sum scale: a number, inv_sqrt_dim (fairseq loss_scale=null) or inv_dim (D2VV mean reduction)
    loss_scale: float | Literal["inv_sqrt_dim", "inv_dim"] = "inv_sqrt_dim"
    cls_loss: float = 0.0  # v2 images: CLS output regressed onto the mean target, weight x sample size
    # Run the teacher outside bf16 autocast (data2vec_vision engine_for_cyclical.py: only the student's forward
    # is under ``torch.cuda.amp.autocast``); fairseq runs the teacher in the student's precision.
    teacher_fp32: bool = False
    # v1: d2v.models.heads.RegressionHeadConfig fields; v2: DecoderConfig fields
    head: dict[str, Any] = field(default_factory=dict)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule.

    Weight decay (one rule, ``optim.param_groups``): every trainable parameter decays except, when
    ``no_decay_1d``, those with fewer than 2 dimensions (biases, norm weights, ALiBi scales, LayerScale) and
    those whose last name component is in ``no_decay_names`` (e.g. ``cls_token``). fairseq, as it runs,
    decays every parameter in every data2vec recipe (``no_decay_1d: false``; see ``optim.py`` for why its
    composite optimizer's exemption never applies); BEiT / data2vec_vision exempts 1-D and ``cls_token``.
    """

    # adamw = torch.optim.AdamW (timm, data2vec_vision); fairseq_adam = fairseq's Adam (eps before the bias
    # correction of the second moment; optim.FairseqAdam)
    optimizer: Literal["adamw", "fairseq_adam"] = "adamw"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    no_decay_1d: bool = True
    no_decay_names: tuple[str, ...] = ()
    clip_norm: float = 0.0  # 0 = no clipping
    grad_accum: int = 1
    schedule: Literal["cosine", "tri_stage", "constant"] = "cosine"
    warmup_steps: int = 0  # cosine / constant
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr (BEiT min_lr 1e-5 at lr 2e-3: 0.005)
    phase_ratios: tuple[float, float, float] = (0.03, 0.9, 0.07)  # tri_stage: warmup / hold / decay
    init_lr_scale: float = 0.01  # tri_stage
    final_lr_scale: float = 0.01  # tri_stage (fairseq default)


@dataclass
class RunConfig:
    """Steps, precision, outputs and checkpoints."""

    out_dir: str = "runs/d2v"
    max_steps: int = 1000
    seed: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast; targets and loss stay fp32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 10
    save_every: int = 1000  # steps; the last step is always saved
    keep_last: int = 2
    keep_best: bool = True  # also keep the checkpoint with the lowest (smoothed) loss as best/
    tensorboard: bool = True
    progress: bool = True
    threads: int = 0  # torch intra-op threads per process; 0 = leave torch's default


@dataclass
class TrainConfig:
    modality: Literal["audio", "image", "text"] = "audio"
    model: dict[str, Any] = field(default_factory=dict)  # Data2VecConfig fields; ``preset`` picks the base
    preprocessing: dict[str, Any] = field(default_factory=dict)  # <Modality>PreprocessingConfig fields
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data)


# --------------------------------------------------------------------------------------------------------
# Loading, overrides and type-directed conversion


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads ``5e-4`` (no dot) as a string; recipes mean the float (YAML 1.2)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse a recipe or an override value (``yaml.safe_load`` with YAML 1.2 exponent floats)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: no arbitrary objects


def resolve_recipe(path_or_name: str | Path) -> Path:
    """A YAML path, or the name of a bundled recipe (``tiny-audio-v1`` or ``tiny-audio-v1.yaml``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    for candidate in (RECIPES_DIR / path.name, RECIPES_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise NotFound(f"config not found: {path_or_name} (neither a file nor a bundled recipe: {', '.join(names)})")


def load_config(path_or_name: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a recipe (or start from defaults when ``None``), apply ``key=value`` overrides, type-check."""
    raw: dict[str, Any] = {}
    if path_or_name is not None:
        path = resolve_recipe(path_or_name)
        try:
            raw = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
        raw.setdefault("name", path.stem)
    for item in overrides:
        apply_override(raw, item)
    return TrainConfig.from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the nested mapping; the value is parsed as YAML (``[0.9,0.95]``, ``true``, ``null``).

    Unknown top-level/dataclass keys are caught later by ``from_dict`` (which knows the schema); free-form
    sections (``model``, ``preprocessing``, ``objective.head``) are validated when they are used.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=5e-4")
    try:
        value = load_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks that a type cannot express; each error names the field."""
    checks = [
        (cfg.data.batch_size >= 1, "data.batch_size", "must be >= 1"),
        (cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0"),
        (cfg.data.max_seconds > 0, "data.max_seconds", "must be > 0"),
        (0 <= cfg.data.min_seconds <= cfg.data.max_seconds, "data.min_seconds", "must be in [0, data.max_seconds]"),
        (0 < cfg.data.crop_scale[0] <= cfg.data.crop_scale[1] <= 1, "data.crop_scale", "must be 0 < lo <= hi <= 1"),
        (cfg.data.block_size >= 4, "data.block_size", "must be >= 4"),
        (cfg.data.max_tokens >= 0, "data.max_tokens", "must be >= 0 (0 = fixed data.batch_size)"),
        (cfg.data.max_tokens == 0 or cfg.modality != "image", "data.max_tokens", "images use data.batch_size"),
        (
            cfg.data.text_blocks == "none" or cfg.data.max_tokens > 0,
            "data.text_blocks",
            "complete_doc blocks vary in length: set data.max_tokens",
        ),
        (0 <= cfg.data.color_jitter < 1, "data.color_jitter", "must be in [0, 1)"),
        (cfg.objective.clone_batch >= 1, "objective.clone_batch", "must be >= 1"),
        (cfg.objective.version == "v2" or cfg.objective.clone_batch == 1, "objective.clone_batch", "must be 1 for v1"),
        (0 < cfg.objective.mask.prob < 1, "objective.mask.prob", "must be in (0, 1)"),
        (cfg.objective.mask.length >= 1, "objective.mask.length", "must be >= 1"),
        (cfg.objective.loss_beta >= 0, "objective.loss_beta", "must be >= 0"),
        (0 < cfg.objective.ema.tau0 <= 1, "objective.ema.tau0", "must be in (0, 1]"),
        (0 < cfg.objective.ema.tau_end <= 1, "objective.ema.tau_end", "must be in (0, 1]"),
        (cfg.objective.ema.anneal_steps >= 0, "objective.ema.anneal_steps", "must be >= 0"),
        (cfg.optim.lr > 0, "optim.lr", "must be > 0"),
        (all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas", "must be in [0, 1)"),
        (cfg.optim.eps > 0, "optim.eps", "must be > 0"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0"),
        (cfg.optim.clip_norm >= 0, "optim.clip_norm", "must be >= 0 (0 = off)"),
        (cfg.optim.grad_accum >= 1, "optim.grad_accum", "must be >= 1"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0"),
        (abs(sum(cfg.optim.phase_ratios) - 1) < 1e-6, "optim.phase_ratios", "must sum to 1"),
        (cfg.run.max_steps >= 1, "run.max_steps", "must be >= 1"),
        (cfg.run.log_every >= 1, "run.log_every", "must be >= 1"),
        (cfg.run.save_every >= 1, "run.save_every", "must be >= 1"),
        (cfg.run.keep_last >= 1, "run.keep_last", "must be >= 1"),
        (bool(cfg.run.out_dir), "run.out_dir", "must not be empty"),
    ]
    for ok, name, what in checks:
        if not ok:
            raise ConfigError(f"{name}: {what} (got {_lookup(cfg, name)!r})")
    if not cfg.data.path:
        raise ConfigError("data.path: no training data given (set data.path=DIR_OR_MANIFEST)")
    if not Path(cfg.data.path).exists():
        raise NotFound(f"data.path: not found: {cfg.data.path}")
    if cfg.modality == "text" and cfg.data.tokenizer and not Path(cfg.data.tokenizer).is_file():
        raise NotFound(f"data.tokenizer: not found: {cfg.data.tokenizer}")


def _lookup(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# --------------------------------------------------------------------------------------------------------
# The model and preprocessing sections, resolved against d2v.models (torch-free)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_model_config(cfg: TrainConfig, *, vocab_size: int | None = None):
    """``model.preset`` (``tiny``/``base``/``large``) for this modality and version, with the other ``model.*``
    keys merged over it -> ``d2v.models.config.Data2VecConfig``. ``vocab_size`` (the tokenizer's) is imposed
    on text models."""
    from d2v.models import config as mc

    section = dict(cfg.model)
    size = section.pop("preset", "tiny")
    if size not in ("tiny", "base", "large"):
        raise ConfigError(f"model.preset: expected one of ['tiny', 'base', 'large'], got {size!r}")
    version = 1 if cfg.objective.version == "v1" else 2
    if section.get("version", version) != version:
        raise ConfigError(f"model.version: {section['version']} contradicts objective.version={cfg.objective.version}")
    if section.get("modality", cfg.modality) != cfg.modality:
        raise ConfigError(f"model.modality: {section['modality']} contradicts modality={cfg.modality}")
    base = to_dict(mc.preset(cfg.modality, size, version))
    merged = _deep_merge(base, section)
    if vocab_size is not None and cfg.modality == "text":
        merged["text"]["vocab_size"] = vocab_size
    return from_dict(mc.Data2VecConfig, merged, where="model")


def resolve_preprocessing_config(cfg: TrainConfig, model_cfg: Any):
    """The checkpoint's preprocessing config: defaults consistent with the model (image size, text length,
    pad id), then the ``preprocessing.*`` keys. Contradictions with the model are errors naming the field."""
    from d2v.models.preprocessing import config as pc

    section = dict(cfg.preprocessing)
    section.setdefault("modality", cfg.modality)
    if cfg.modality == "image":
        size = model_cfg.image.image_size
        if section.setdefault("image_size", size) != size:
            raise ConfigError(f"preprocessing.image_size: {section['image_size']} != model.image.image_size {size}")
        section.setdefault("resize_size", int(round(size / 0.875)))
        return from_dict(pc.ImagePreprocessingConfig, section, where="preprocessing")
    if cfg.modality == "text":
        limit = model_cfg.text.max_tokens
        section.setdefault("max_length", min(limit, 512))
        section.setdefault("pad_id", model_cfg.text.pad_id)
        if section["max_length"] > limit:
            raise ConfigError(f"preprocessing.max_length: {section['max_length']} > the model's {limit} positions")
        if cfg.data.block_size > section["max_length"]:
            raise ConfigError(
                f"data.block_size: {cfg.data.block_size} > preprocessing.max_length {section['max_length']}"
            )
        return from_dict(pc.TextPreprocessingConfig, section, where="preprocessing")
    return from_dict(pc.AudioPreprocessingConfig, section, where="preprocessing")
