"""Sampling helpers shared by the mask generators: probability checks, rank-based sampling, span expansion.

The "draw random keys, rank them, keep the first n" trick (:func:`rank`) samples without replacement for all
rows at once with a different ``n`` per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from d2v.core.errors import ConfigError


def check_prob(name: str, value: float, *, inclusive_one: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if inclusive_one else 0.0 <= value < 1.0
    if not ok:
        raise ConfigError(f"{name} must be in [0, 1{']' if inclusive_one else ')'}, got {value}")


def rank(keys: Tensor) -> Tensor:
    """Rank of every entry of ``keys`` along dim 1 (0 = smallest). (B, T) -> (B, T) int64."""
    order = keys.argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(keys.shape[1], device=keys.device).expand_as(order))
    return ranks


def choose(candidates: Tensor, n: Tensor, generator: torch.Generator) -> Tensor:
    """Pick ``n[b]`` positions uniformly without replacement among ``candidates[b]`` (bool (B, T)).

    ``n`` is clamped to the number of candidates. Returns a bool (B, T) mask.
    """
    keys = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    keys = keys.masked_fill(~candidates, 2.0)  # non-candidates rank last
    n = torch.minimum(n, candidates.sum(dim=1))
    return (rank(keys) < n[:, None]) & candidates


def equalize(mask: Tensor, target: Tensor | int, generator: torch.Generator, allowed: Tensor | None = None) -> Tensor:
    """Randomly un-mask or mask extra positions so that every row has exactly ``target`` masked positions.

    Rows with too many keep a uniform subset of their masked positions; rows with too few keep all of them and
    gain uniformly chosen positions among the ``allowed`` (default: all) unmasked ones. One ranking does both:
    masked positions get keys in [0, 1), unmasked allowed ones in [1, 2), the rest 3.
    """
    keys = torch.rand(mask.shape, generator=generator, device=mask.device) + (~mask).float()
    if allowed is not None:
        keys = keys.masked_fill(~allowed & ~mask, 3.0)
    target = torch.as_tensor(target, device=mask.device).reshape(-1, 1)
    out = rank(keys) < target
    return out if allowed is None else out & (allowed | mask)


def expand_spans(starts: Tensor, span: int) -> Tensor:
    """Expand every start of bool (B, T) ``starts`` to ``[start, start + span)``, truncated at the end.

    A running max over a window of ``span`` ending at t; returns bool (B, T).
    """
    return F.max_pool1d(F.pad(starts[:, None].float(), (span - 1, 0)), kernel_size=span, stride=1)[:, 0] > 0
