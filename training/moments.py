"""Per-step statistics the trainer reduces over ranks (``Moments``), and ``plain`` (tuples -> lists)."""

from __future__ import annotations

import math
from typing import Any

import torch


class Moments:
    """Per-step sums for the loss and the collapse statistics: counts, per-dim sums and squares (fp64)."""

    def __init__(self, dim: int) -> None:
        self.loss_sum = 0.0
        self.t = torch.zeros(1 + 2 * dim, dtype=torch.float64)
        self.p = torch.zeros(1 + 2 * dim, dtype=torch.float64)

    @staticmethod
    def _acc(buf: torch.Tensor, x: torch.Tensor) -> None:
        x = x.double().cpu()
        buf += torch.cat([torch.tensor([float(x.shape[0])], dtype=torch.float64), x.sum(0), x.square().sum(0)])

    def add(self, out) -> None:
        self.loss_sum += float(out.loss_sum)
        self._acc(self.t, out.target)
        self._acc(self.p, out.pred)

    def pack(self) -> torch.Tensor:
        return torch.cat([torch.tensor([self.loss_sum], dtype=torch.float64), self.t, self.p])

    @staticmethod
    def unpack(packed: torch.Tensor, dim: int) -> tuple[float, float, float]:
        def std(buf: torch.Tensor) -> float:
            n, s, ss = buf[0], buf[1 : 1 + dim], buf[1 + dim :]
            if n < 2:
                return math.nan
            var = (ss - s * s / n) / (n - 1)
            return float(torch.sqrt(var.clamp_min(0) + 1e-6).mean())

        size = 1 + 2 * dim
        return float(packed[0]), std(packed[1 : 1 + size]), std(packed[1 + size :])


def plain(value: Any) -> Any:
    """Tuples -> lists for YAML/JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
