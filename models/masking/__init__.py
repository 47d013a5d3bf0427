"""Mask generators for data2vec v1 and data2vec 2.0, plus the v2 keep/restore bookkeeping.

Every generator is a pure function of its arguments and an explicit ``torch.Generator`` (no global RNG,
no module state). Masks are ``bool`` tensors, ``True`` = masked, created on ``generator.device``; a
``padding_mask`` (``True`` = padded) is moved there. Masks are usually precomputed on CPU in the data
pipeline (v2 does this per clone) and moved with the batch.

| recipe | function | module | spec |
|---|---|---|---|
| v1 audio | :func:`span_mask` (p 0.65, span 10), :func:`same_masked_count` (batch equalisation) | ``span`` | §2.1 |
| v1 text | :func:`text_span_mask` (p 0.35, span 4) or :func:`bert_mask` (15%, 80/10/10) | ``text`` | §2.2, §8.2 |
| v1 vision | :func:`beit_block_mask` (120 of 14x14) | ``block`` | §2.3 |
| v2 audio / image | :func:`block_mask_1d` / :func:`block_mask_2d` (exact count, inverse) | ``block`` | §2.4 |
| v2 text | :func:`random_mask` (MAE) | ``block`` | §2.4 |

v2 students drop the masked tokens: :func:`visible_indices` / :func:`make_mask_info`, :func:`gather_kept` and
:func:`restore` (module ``indices``). Shared sampling helpers live in ``_common``.
"""

from __future__ import annotations

from .block import beit_block_mask, block_mask_1d, block_mask_2d, random_mask
from .indices import MaskInfo, gather_kept, make_mask_info, restore, visible_indices
from .span import same_masked_count, span_mask
from .text import MaskedText, bert_mask, text_span_mask

__all__ = [
    "MaskInfo",
    "MaskedText",
    "beit_block_mask",
    "bert_mask",
    "block_mask_1d",
    "block_mask_2d",
    "gather_kept",
    "make_mask_info",
    "random_mask",
    "restore",
    "same_masked_count",
    "span_mask",
    "text_span_mask",
    "visible_indices",
]
