"""Text front end: token ids [B, T] -> token embeddings [B, T, D] (fairseq RoBERTa / data2vec layout)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from d2v.core.errors import InvalidInput
from d2v.models.encoders import FrontEndOutput, MaskMode
from d2v.models.masking import gather_kept, visible_indices


class TextEncoder(nn.Module):
    """Token + learned position embeddings -> LayerNorm -> dropout [-> context LayerNorm].

    Positions follow fairseq ``make_positions``: real tokens are numbered ``pad_id + 1, pad_id + 2, ...``
    and padding gets ``pad_id`` (whose embedding row is unused), hence ``max_positions = max_tokens + pad_id + 1``.
    Text masking replaces token ids with ``<mask>`` before encoding; only ``mask_mode="remove"`` (data2vec 2.0)
    acts here.

    Args:
        dim: Transformer width.
        vocab_size: rows of the token embedding.
        pad_id: padding token id (also the position padding index).
        max_positions: rows of the position embedding.
        norm_eps: embedding LayerNorm epsilon.
        dropout: dropout after the LayerNorm.
        context_norm: a second LayerNorm before the first block (data2vec 2.0 text with prenet blocks: fairseq's
            context-encoder norm, which it only builds when ``prenet_depth > 0``).
        context_norm_eps: its epsilon (fairseq: the model's ``norm_eps``).
    """

    num_extra_tokens = 0  # <s> is an ordinary token of the sequence

    def __init__(
        self,
        *,
        dim: int,
        vocab_size: int,
        pad_id: int = 1,
        max_positions: int = 514,
        norm_eps: float = 1e-5,
        dropout: float = 0.1,
        context_norm: bool = False,
        context_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.max_tokens = max_positions - pad_id - 1
        self.token_embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.position_embedding = nn.Embedding(max_positions, dim, padding_idx=pad_id)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.context_norm = nn.LayerNorm(dim, eps=context_norm_eps) if context_norm else nn.Identity()

    def local_features(self, input_ids: Tensor, padding_mask: Tensor | None = None) -> FrontEndOutput:
        """input_ids [B, T] int64; padding_mask [B, T] True = padded (default: ``input_ids == pad_id``)."""
        if not torch.compiler.is_compiling() and input_ids.shape[1] > self.max_tokens:
            raise InvalidInput(f"text is {input_ids.shape[1]} tokens long; this model takes at most {self.max_tokens}")
        if padding_mask is None:
            padding_mask = input_ids.eq(self.pad_id)
        real = (~padding_mask).long()
        position_ids = torch.cumsum(real, dim=1) * real + self.pad_id
        x = self.token_embedding(input_ids) + self.position_embedding(position_ids)
        return FrontEndOutput(self.dropout(self.norm(x)), padding_mask)

    def contextualize(
        self, local: FrontEndOutput, mask: Tensor | None = None, mask_mode: MaskMode = "replace"
    ) -> FrontEndOutput:
        """``remove`` keeps the unmasked tokens (data2vec 2.0); ``replace`` is done on ids, not here. The context
        norm works per token, so it may follow the removal."""
        if mask is None:
            return FrontEndOutput(self.context_norm(local.tokens), local.padding_mask, local.positions)
        if mask_mode == "replace":
            raise InvalidInput("text is masked on token ids (replace them with <mask>); use mask_mode='remove' here")
        kept = visible_indices(mask)
        padding_mask = gather_kept(local.padding_mask, kept) if local.padding_mask is not None else None
        return FrontEndOutput(self.context_norm(gather_kept(local.tokens, kept)), padding_mask, kept)

    def forward(
        self,
        input_ids: Tensor,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        mask_mode: MaskMode = "replace",
    ) -> FrontEndOutput:
        return self.contextualize(self.local_features(input_ids, padding_mask), mask, mask_mode)
