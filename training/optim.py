"""AdamW with the data2vec parameter groups, and the learning-rate schedules (cosine, tri-stage, constant).

The weight-decay rule lives here and only here (:func:`param_groups`), configured per recipe by
``optim.no_decay_1d`` / ``optim.no_decay_names`` as each reference applies it:

* fairseq decays every parameter. Its plain ``adam`` (data2vec v1 audio and text, 2.0 audio Base) has no
  groups; data2vec 2.0's other recipes use the ``composite`` optimizer, and ``data2vec2.py`` marks 1-D
  parameters, biases and ``alibi_scale`` with ``optim_overrides = {"optimizer": {"weight_decay_scale": 0}}``,
  but ``optim/composite.py`` applies that scale only ``if ... "optimizer_config" in optimizer_config``, a key
  an Adam config never has: the marked parameters get their own Adam with the full weight decay (fairseq
  0.12.3.1 and HEAD; checked with the fairseq oracle, tests/training/test_fairseq_parity.py).
* BEiT / data2vec_vision exempts 1-D parameters, biases and ``model.no_weight_decay()`` = ``cls_token``,
  ``pos_embed`` (``optim_factory.get_parameter_groups``); biases are 1-D here, so "1-D or a listed name".

``optim.optimizer`` picks the update: ``adamw`` is ``torch.optim.AdamW`` (what timm / data2vec_vision run);
``fairseq_adam`` is fairseq's ``Adam`` (:class:`FairseqAdam`), which adds ``eps`` to ``sqrt(v)`` before the
bias correction. Both decouple the weight decay from the gradient. Schedules are pure functions of the step
returning a multiplier of the peak lr, wrapped in ``LambdaLR`` so their state is just ``last_epoch``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn

from .config import OptimConfig


def decays(name: str, param: nn.Parameter, no_decay_1d: bool, no_decay_names: Iterable[str]) -> bool:
    """Whether ``param`` (called ``name`` in its module) gets weight decay under the recipe's rule."""
    if no_decay_1d and param.ndim < 2:
        return False
    return name.rsplit(".", 1)[-1] not in set(no_decay_names)


def param_groups(
    modules: Iterable[nn.Module],
    weight_decay: float,
    *,
    no_decay_1d: bool = True,
    no_decay_names: Iterable[str] = (),
) -> list[dict]:
    """Two AdamW groups (decay, no decay) over the trainable parameters of ``modules`` (deduplicated, in a
    stable order); each group also lists its parameter ``names`` (for tests and logs; not passed to AdamW)."""
    names = tuple(no_decay_names)
    groups = {True: ([], []), False: ([], [])}
    seen: set[int] = set()
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            params, param_names = groups[decays(name, p, no_decay_1d, names)]
            params.append(p)
            param_names.append(name)
    return [
        {"params": groups[True][0], "names": groups[True][1], "weight_decay": weight_decay},
        {"params": groups[False][0], "names": groups[False][1], "weight_decay": 0.0},
    ]


class FairseqAdam(torch.optim.Optimizer):
    """fairseq's Adam (``fairseq/optim/adam.py``, the update its CPU path runs), per parameter with ``t`` its
    own step count: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``p -= lr * wd * p``, then
    ``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``.

    Unlike ``torch.optim.AdamW`` (``eps`` added to the bias-corrected ``sqrt(v / (1 - b2^t))``) the effective
    ``eps`` is ``eps / sqrt(1 - b2^t)``: 7x larger at the first step with b2 0.98, the same after a few hundred.
    Parameters without a gradient are skipped (their step count lags, as in fairseq). fp32 parameters only
    (the trainer keeps them fp32 under autocast); parameters sharing a step count update in one ``_foreach``.
    """

    def __init__(self, params, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_step: dict[int, list[nn.Parameter]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dtype != torch.float32:
                    raise TypeError(f"FairseqAdam updates fp32 parameters, got {p.dtype}")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                by_step[state["step"]].append(p)
            for t, params in by_step.items():
                self._update(group, t, params)
        return loss

    def _update(self, group: dict, t: int, params: list[nn.Parameter]) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        exp_avg = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avg, b1)
        torch._foreach_add_(exp_avg, grads, alpha=1 - b1)
        torch._foreach_mul_(exp_avg_sq, b2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denom, eps)
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        if wd != 0:
            torch._foreach_add_(params, params, alpha=-wd * lr)
        torch._foreach_addcdiv_(params, exp_avg, denom, value=-step_size)


def build_optimizer(modules: Iterable[nn.Module], cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(modules, cfg.weight_decay, no_decay_1d=cfg.no_decay_1d, no_decay_names=cfg.no_decay_names)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups if g["params"]]
    if cfg.optimizer == "fairseq_adam":
        return FairseqAdam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """The factor applied to ``cfg.lr`` at optimizer step ``step`` (0-based)."""
    total = max(1, total_steps)
    if cfg.schedule == "tri_stage":
        return tri_stage(step, total, cfg.phase_ratios, cfg.init_lr_scale, cfg.final_lr_scale)
    warmup = min(cfg.warmup_steps, total)
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def tri_stage(
    step: int, total: int, ratios: tuple[float, float, float], init_scale: float, final_scale: float
) -> float:
    """fairseq ``tri_stage``: linear warm-up from ``init_scale``, hold at 1, exponential decay to ``final_scale``."""
    warmup = int(total * ratios[0])
    hold = int(total * ratios[1])
    decay = max(1, total - warmup - hold)
    if step < warmup:
        return init_scale + (1 - init_scale) * step / max(1, warmup)
    if step < warmup + hold:
        return 1.0
    progress = min(1.0, (step - warmup - hold) / decay)
    return math.exp(math.log(final_scale) * progress)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))
