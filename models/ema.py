"""The EMA teacher (spec §1.1-1.2): a frozen deep copy of (part of) the student, updated after each optimizer step.

Driven by the training loop::

    teacher = EMATeacher(model, ema_preset("v2_audio", tau0=0.999, tau_end=0.99999, anneal_steps=75_000))
    ...
    optimizer.step()
    teacher.update(model, step)          # step = number of optimizer updates done so far
    with torch.no_grad():
        out = teacher.module.encode(...)  # always in eval mode

Parameter names are those of the module handed to the constructor. The project's ``Data2VecModel`` (owned by
``models/model.py``) has two sub-modules: ``front_end`` (the modality encoder: CNN + projection + mask embedding +
``front_end.pos_conv`` + ``front_end.context_norm`` for audio; patch embedding + positions for images;
token/position embeddings + embedding LN for text) and ``transformer`` (the shared blocks). :func:`ema_preset`
writes the spec's per-recipe teacher contents as ``copy_keys`` / ``copy_exclude`` over those prefixes
(``FRONT_END``, ``POS_CONV``, ``CONTEXT_NORM``); change them there if the names change.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from d2v.core.errors import ConfigError

__all__ = ["EMAConfig", "EMATeacher", "Recipe", "ema_preset", "matches_any"]

Recipe = Literal["v1_audio", "v1_audio_audioset", "v1_text", "v1_vision", "v2_audio", "v2_image", "v2_text"]


@dataclass
class EMAConfig:
    """EMA schedule and sharing rules.

    ``decay`` goes linearly from ``tau0`` to ``tau_end`` over ``anneal_steps`` updates, then stays at ``tau_end``.
    ``copy_keys``: parameter-name patterns copied verbatim from the student at every update instead of being
    averaged (the teacher *shares* them). ``copy_exclude``: patterns averaged even though they match ``copy_keys``
    (e.g. ``front_end.pos_conv`` inside a shared ``front_end``). A pattern matches a name equal to it, any name
    under it (``"front_end"`` matches ``"front_end.projection.weight"``), or an ``fnmatch`` glob
    (``"*.pos_conv.*"``).
    """

    tau0: float = 0.999
    tau_end: float = 0.9999
    anneal_steps: int = 30_000
    copy_keys: tuple[str, ...] = ()
    copy_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("tau0", "tau_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"EMAConfig.{name} must be in [0, 1], got {value}")
        if self.anneal_steps < 0:
            raise ConfigError(f"EMAConfig.anneal_steps must be >= 0, got {self.anneal_steps}")
        # JSON round trips turn tuples into lists.
        self.copy_keys = tuple(self.copy_keys)
        self.copy_exclude = tuple(self.copy_exclude)


def matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    """True if ``name`` equals, lives under, or ``fnmatch``-es one of ``patterns``."""
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


FRONT_END = "front_end"  # the modality front end of ``Data2VecModel``
POS_CONV = "front_end.pos_conv"  # the audio convolutional positional encoder
CONTEXT_NORM = "front_end.context_norm"  # audio LayerNorm after the pos conv (fairseq ``encoder.layer_norm``)


def ema_preset(recipe: Recipe, *, tau0: float, tau_end: float, anneal_steps: int) -> EMAConfig:
    """The spec's teacher contents per recipe (§1.2) for a teacher that deep-copies the whole ``Data2VecModel``,
    with the given schedule (§1.1; the training recipes set it, ``objective.ema``).

    | recipe | averaged | copied from the student each step |
    |---|---|---|
    | v1_audio | transformer + context LN | rest of front end incl. pos conv |
    | v1_audio_audioset | transformer + context LN + pos conv | rest of front end |
    | v1_text | transformer layers | front end (embeddings, positions, emb. LN) |
    | v1_vision | everything (timm ModelEmaV2) | nothing |
    | v2_audio | transformer + context LN + pos conv | rest of front end (CNN, proj.) |
    | v2_image | everything (``ema_local_encoder``) | nothing |
    | v2_text | transformer (``ema_encoder_only``) | front end |

    (v1 audio: ``ema_layers_only`` copies the pos conv while the encoder LayerNorm after it is averaged.)

    "Copied" reproduces fairseq's teachers that reuse the student's modules or features (v1 audio feeds the
    student's CNN features; v2 text/audio reuse ``local_features``). The training loop may skip recomputing those
    parts in the teacher; the results are the same because the weights are identical. Regression heads and v2
    decoders are separate modules and never in the teacher. Mask embeddings are copied (the teacher never masks).

    Args:
        recipe: which recipe.
        tau0: decay at step 0.
        tau_end: decay from ``anneal_steps`` on.
        anneal_steps: length of the linear ramp from ``tau0`` to ``tau_end``.
    """
    shared: tuple[str, ...] = (FRONT_END,)
    match recipe:
        case "v1_audio":
            copy_keys, copy_exclude = shared, (CONTEXT_NORM,)
        case "v1_audio_audioset" | "v2_audio":
            copy_keys, copy_exclude = shared, (POS_CONV, CONTEXT_NORM)
        case "v1_text" | "v2_text":
            copy_keys, copy_exclude = shared, ()
        case "v1_vision" | "v2_image":
            copy_keys, copy_exclude = (), ()
        case _:
            raise ConfigError(f"unknown EMA recipe {recipe!r}")
    return EMAConfig(tau0, tau_end, anneal_steps, copy_keys=copy_keys, copy_exclude=copy_exclude)


class EMATeacher:
    """EMA copy of a module with an fp32 master state.

    The teacher module is a ``deepcopy`` of the student module (so it starts identical, spec §8.8), with
    ``requires_grad_(False)`` and ``eval()``. Its parameters keep the student's dtype; the running average is
    kept in fp32 (for fp32 parameters the parameter itself is the state, no second copy). Parameters of the
    student that the teacher lacks (decoders, heads) are ignored; teacher parameters the student lacks are an
    error.

    Args:
        module: the student module (or sub-module) to copy; not modified.
        cfg: schedule and sharing rules.
    """

    def __init__(self, module: nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.module = copy.deepcopy(module)
        self.module.requires_grad_(False)
        self.module.eval()
        self._shadow: dict[str, Tensor] = {}
        self._bind_shadow()

    def _bind_shadow(self) -> None:
        """fp32 master copy per parameter; an alias of the parameter when it already is fp32."""
        old = self._shadow
        self._shadow = {}
        for name, p in self.module.named_parameters():
            if p.dtype == torch.float32:
                self._shadow[name] = p.data
            else:
                src = old.get(name, p.data)
                self._shadow[name] = src.detach().to(device=p.device, dtype=torch.float32, copy=True)

    def to(self, device: torch.device | str) -> EMATeacher:
        """Move the teacher and its fp32 state (dtypes are unchanged)."""
        self.module.to(device)
        self._shadow = {k: v.to(device) for k, v in self._shadow.items()}
        self._bind_shadow()
        return self

    def decay_at(self, step: int) -> float:
        """fairseq ``get_annealed_rate``: linear from ``tau0`` (step 0) to ``tau_end`` (step ``anneal_steps``),
        constant afterwards."""
        c = self.cfg
        if step >= c.anneal_steps or c.tau0 == c.tau_end:
            return c.tau_end
        return c.tau_end - (c.tau_end - c.tau0) * (1.0 - step / c.anneal_steps)

    def is_copied(self, name: str, student_param: Tensor) -> bool:
        """Whether ``name`` is copied verbatim (copy_keys minus copy_exclude, or frozen in the student)."""
        if not student_param.requires_grad:
            return True
        return matches_any(name, self.cfg.copy_keys) and not matches_any(name, self.cfg.copy_exclude)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """One EMA step after ``optimizer.step()``: ``ema = d * ema + (1 - d) * student`` with ``d = decay_at(step)``.

        Copied parameters (see :meth:`is_copied`) and all buffers are copied from the student. When ``d == 1`` the
        whole step is skipped (teacher frozen), as in fairseq.

        Args:
            student: the live student module, with the same parameter names as the copied one.
            step: number of optimizer updates so far.

        Returns:
            the decay used.
        """
        decay = self.decay_at(step)
        if decay >= 1.0:
            return decay
        student_params = dict(student.named_parameters())
        missing = [n for n in self._shadow if n not in student_params]
        if missing:
            raise ConfigError(f"EMA teacher parameters missing from the student: {missing[:5]} ({len(missing)})")
        avg_ema, avg_src, copy_ema, copy_src = [], [], [], []
        for name, ema in self._shadow.items():
            src = student_params[name].detach()
            if self.is_copied(name, student_params[name]):
                copy_ema.append(ema)
                copy_src.append(src)
            else:
                avg_ema.append(ema)
                avg_src.append(src if src.dtype == torch.float32 else src.float())
        if avg_ema:
            # mul + add (not lerp) so that the result is exactly fairseq's ``mul_(d).add_(p, alpha=1-d)``.
            torch._foreach_mul_(avg_ema, decay)
            torch._foreach_add_(avg_ema, avg_src, alpha=1.0 - decay)
        if copy_ema:
            torch._foreach_copy_(copy_ema, copy_src)
        self._sync_params()
        student_buffers = dict(student.named_buffers())
        for name, buf in self.module.named_buffers():
            if name in student_buffers:
                buf.copy_(student_buffers[name])
        return decay

    def _sync_params(self) -> None:
        """Write the fp32 state into non-fp32 teacher parameters."""
        dst, src = [], []
        for name, p in self.module.named_parameters():
            if p.dtype != torch.float32:  # fp32 parameters are their own state
                dst.append(p.data)
                src.append(self._shadow[name])
        if dst:
            torch._foreach_copy_(dst, src)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for a bit-exact resume: the teacher module and the fp32 state of its non-fp32
        parameters (fp32 parameters are their own state)."""
        params = dict(self.module.named_parameters())
        fp32 = {n: s for n, s in self._shadow.items() if params[n].dtype != torch.float32}
        return {"module": self.module.state_dict(), "fp32_state": fp32}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        params = dict(self.module.named_parameters())
        for name, p in params.items():
            if p.dtype == torch.float32:
                self._shadow[name] = p.data
            elif name in state["fp32_state"]:
                self._shadow[name] = state["fp32_state"][name].to(device=p.device, dtype=torch.float32, copy=True)
            else:
                self._shadow[name] = p.data.float()
        self._sync_params()
