"""The data2vec training step (spec §1-§5): teacher targets, masked student, head / decoder, loss.

``Pretrainer`` is the module DDP wraps: the student ``Data2VecModel`` plus the training-only head (v1
regression head, v2 convolutional decoder). Its ``forward(batch, teacher)`` runs, per recipe:

| | student input | teacher input (eval mode, no grad) |
|---|---|---|
| v1 audio | student's local CNN features, masked frames -> mask embedding | the same local features, unmasked |
| v1 text | token ids with ``<mask>`` | the **original** ids (spec pitfall 1) |
| v1 image | patches, masked -> mask token | the image (whole EMA model) |
| v2 audio / text | local features x M clones, masked tokens removed | the student's local features (once) |
| v2 image | patches x M clones, masked patches removed | the image through the teacher's own patch embed |

Targets (``d2v.models.targets.build_targets``) and the loss (``d2v.models.loss.d2v_loss``) are computed in
fp32 outside autocast; only masked positions count. The loss is normalised by the masked-position count of
the whole optimizer step over all ranks and micro-batches (``norm_count``), as fairseq divides by the
all-reduced sample size, so 1 x 8 and 2 x 4 processes give the same gradient. (One exception, kept from
fairseq: the v2 image CLS term is weighted by ``cls_loss`` x the *per-process* masked count, so its weight
follows the per-process batch size.)
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from d2v.core.config import from_dict
from d2v.core.contract import PRIMARY_INPUT
from d2v.core.errors import ConfigError
from d2v.models import config as mc
from d2v.models.ema import EMATeacher, ema_preset
from d2v.models.encoders import FrontEndOutput
from d2v.models.heads import DecoderConfig, RegressionHeadConfig, build_decoder, build_regression_head
from d2v.models.loss import d2v_loss
from d2v.models.masking import make_mask_info
from d2v.models.model import Data2VecModel, repeat_local
from d2v.models.targets import build_targets

from .config import ObjectiveConfig
from .sample_randomness import NOISE, sample_generator


@dataclass
class StepOutput:
    """One micro-batch. ``loss`` is what to back-propagate (already divided by the step's global count);
    ``loss_sum`` / ``sample_size`` give the per-position loss for logging; ``target`` / ``pred`` are the
    fp32 masked rows ([N, D], detached) for the collapse statistics."""

    loss: Tensor
    loss_sum: Tensor
    sample_size: int
    target: Tensor
    pred: Tensor


def head_config(obj: ObjectiveConfig) -> RegressionHeadConfig | DecoderConfig:
    cls = RegressionHeadConfig if obj.version == "v1" else DecoderConfig
    return from_dict(cls, obj.head, where="objective.head")


def build_teacher(model: Data2VecModel, obj: ObjectiveConfig, max_steps: int) -> EMATeacher:
    """EMA copy of the student with the recipe's sharing rules (spec §1.2) and the config's schedule."""
    rules = obj.ema.rules
    if rules == "auto":
        modality = "vision" if model.modality == "image" and obj.version == "v1" else model.modality
        rules = f"{obj.version}_{modality}"
    cfg = ema_preset(rules, tau0=obj.ema.tau0, tau_end=obj.ema.tau_end, anneal_steps=obj.ema.anneal_steps or max_steps)
    return EMATeacher(model, cfg)


class Pretrainer(nn.Module):
    """Student + head/decoder; ``forward`` is one micro-batch of the data2vec objective.

    Args:
        model: the student ``Data2VecModel`` (kept unwrapped here; DDP wraps the ``Pretrainer``).
        obj: the objective section of the training config.
        seed: run seed (decoder noise is drawn per sample from ``(seed, epoch, index)``).
        precision: ``bf16`` runs the student encoder under autocast, and the teacher unless
            ``obj.teacher_fp32``.
    """

    def __init__(self, model: Data2VecModel, obj: ObjectiveConfig, *, seed: int = 0, precision: str = "fp32"):
        super().__init__()
        self.model = model
        self.obj = obj
        self.seed = seed
        self.precision = precision
        cfg = model.config
        self.v2 = obj.version == "v2"
        self.clones = obj.clone_batch if self.v2 else 1
        self.targets: mc.TargetConfig = cfg.targets
        self.extra = model.num_extra_tokens
        hc = head_config(obj)
        if self.v2:
            grid = (cfg.image.grid_size,) * 2 if cfg.modality == "image" else None
            self.head = build_decoder(hc, model.dim, grid)
            # Masked tokens are removed, never replaced: the mask embedding gets no gradient (and DDP would
            # complain about an unused parameter).
            for name in ("mask_embedding", "mask_token"):
                param = getattr(model.front_end, name, None)
                if isinstance(param, nn.Parameter):
                    param.requires_grad_(False)
        else:
            self.head = build_regression_head(hc, model.dim)
        if cfg.transformer.init == "beit":
            self.head.apply(_init_head_beit)
        elif hc.init == "bert":
            self.head.apply(_init_head_bert)  # else: PyTorch's defaults, as fairseq leaves its heads
        scale = obj.loss_scale
        self.loss_scale = {"inv_sqrt_dim": 1 / math.sqrt(model.dim), "inv_dim": 1 / model.dim}.get(scale, scale)
        if cfg.modality == "image" and obj.cls_loss and not self.v2:
            raise ConfigError("objective.cls_loss: only data2vec 2.0 images regress the CLS token")

    def autocast(self, device: torch.device, *, teacher: bool = False):
        if self.precision != "bf16" or (teacher and self.obj.teacher_fp32):
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------------------------------ teacher

    def teacher_uses_student_local(self) -> bool:
        """v1 audio and v2 audio/text feed the teacher the student's local features (spec §1.2, pitfall 14)."""
        modality = self.model.modality
        return modality == "audio" or (modality == "text" and self.v2)

    @torch.no_grad()
    def make_targets(self, teacher: EMATeacher, batch: dict[str, Any], local: FrontEndOutput | None) -> Tensor:
        """fp32 [B, T, D] targets over the front end's tokens (extra tokens removed)."""
        tm = teacher.module
        tm.eval()
        with self.autocast(batch["_device"], teacher=True):
            if local is not None:
                detached = FrontEndOutput(local.tokens.detach(), local.padding_mask, local.positions)
                out = tm.encode_local(detached)
            else:
                out = tm.encode(batch[PRIMARY_INPUT[self.model.modality]])  # original tokens / full image
        source = "block" if self.targets.source == "block" else "ffn"
        layers = [getattr(layer, source)[:, self.extra :] for layer in out.layers]
        with torch.autocast(device_type=batch["_device"].type, enabled=False):
            return build_targets(layers, self.targets.top_k, self.targets.layer_norm, self.targets.final_norm)

    # ------------------------------------------------------------------------------------------ student

    def forward(self, batch: dict[str, Any], teacher: EMATeacher, norm_count: float) -> StepOutput:
        device = batch["_device"]
        modality = self.model.modality
        mask: Tensor = batch["mask"]  # [B * M, T]
        inputs = batch[PRIMARY_INPUT[modality]]
        with self.autocast(device):
            local = self.model.local_features(batch["student_ids"] if modality == "text" and not self.v2 else inputs)
        y = self.make_targets(teacher, batch, local if self.teacher_uses_student_local() else None)  # [B, T, D]
        with self.autocast(device):
            if self.v2:
                out = self.model.encode_local(repeat_local(local, self.clones), mask, mask_mode="remove")
                info = make_mask_info(mask)
                kept = out.last_hidden[:, self.extra :]
                noise = self._decoder_noise(batch["keys"], mask.shape[1] - info.num_keep, kept)
                pred = self.head(kept, info.ids_restore, noise=noise)  # [B * M, T, D]
            else:
                out = self.model.encode_local(local, None if modality == "text" else mask)
                pred = self.head(out.last_hidden[:, self.extra :])
        if self.clones > 1:
            y = y.repeat_interleave(self.clones, dim=0)
        with torch.autocast(device_type=device.type, enabled=False):
            result = d2v_loss(pred.float(), y, beta=self.obj.loss_beta, scale=self.loss_scale, mask=mask)
            loss_sum = result.loss_sum
            if self.v2 and self.obj.cls_loss and modality == "image":
                # fairseq: the CLS output regresses the time-average of the targets, weight cls_loss x sample size.
                cls = d2v_loss(out.last_hidden[:, 0].float(), y.mean(dim=1), scale=self.loss_scale)
                loss_sum = loss_sum + self.obj.cls_loss * result.sample_size * cls.loss_sum
        return StepOutput(
            loss=loss_sum / norm_count,
            loss_sum=loss_sum.detach(),
            sample_size=result.sample_size,
            target=y[mask].detach(),
            pred=pred[mask].detach().float(),
        )

    def _decoder_noise(self, keys: Tensor, num_masked: int, like: Tensor) -> Tensor:
        """N(0, mask_noise_std) fill of the masked slots, drawn per (sample, clone) so that it does not depend
        on the batch composition or the number of processes."""
        rows = []
        for epoch, index in keys.tolist():
            for clone in range(self.clones):
                g = sample_generator(self.seed, epoch, index, NOISE, clone)
                rows.append(torch.randn(num_masked, like.shape[-1], generator=g))
        noise = torch.stack(rows).mul_(self.head.mask_noise_std)
        return noise.to(device=like.device, dtype=like.dtype)


def _init_head_bert(module: nn.Module) -> None:
    """``objective.head.init: bert``: Linear layers normal(0.02), zero bias (fairseq ``init_bert_params``)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _init_head_beit(module: nn.Module) -> None:
    """The v1 vision head: data2vec_vision inits ``lm_head`` with the encoder (``_init_weights``: truncated
    normal std 0.02 cut at +-1 std, zero bias). fairseq's heads keep PyTorch's defaults: v1 audio ``final_proj``
    and v1 text ``regression_head`` sit outside the module ``init_bert_params`` is applied to, and the 2.0
    decoders' convs are never re-initialised and their ``proj`` is ``reset_parameters()``-ed after it."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.02, b=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
