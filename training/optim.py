"""AdamW with the data2vec parameter groups, and the learning-rate schedules (cosine, tri-stage, constant).

The weight-decay rule lives here and only here: parameters with fewer than two dimensions (biases, norm
weights, per-head ALiBi scales, mask embeddings of shape [D]) get no weight decay, everything else does
(fairseq ``data2vec2.py:264-268``; nanoGPT's ``p.dim() >= 2``). Schedules are pure functions of the step
returning a multiplier of the peak lr, wrapped in ``LambdaLR`` so their state is just ``last_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .config import OptimConfig


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters of ``modules`` (deduplicated, in a stable order)."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for _, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(modules: Iterable[nn.Module], cfg: OptimConfig) -> torch.optim.AdamW:
    groups = [g for g in param_groups(modules, cfg.weight_decay) if g["params"]]
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
