"""The pretraining loop: ``Trainer(cfg, dist).setup() / train() / save() / close()``.

One optimizer step = ``grad_accum`` micro-batches per rank (all but the last under DDP ``no_sync``), the loss
normalised by the step's masked-position count over all ranks and micro-batches, gradient clipping, AdamW,
the lr schedule, then the EMA teacher update (spec §1.1: after every optimizer step). Metrics are reduced
over ranks once per step; rank 0 logs and writes checkpoints. Resuming restores the student, head, teacher,
optimizer, scheduler, every RNG and the data position, so ``2 steps + resume + 2 steps == 4 steps``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from d2v.core.errors import D2VError
from d2v.models.config import default_embedding_config
from d2v.models.model import Data2VecModel
from d2v.models.preprocessing import (
    AudioPreprocessor,
    ImagePreprocessor,
    TextPreprocessor,
    load_tokenizer,
    train_bpe_tokenizer,
)
from d2v.models.preprocessing.text import MASK_TOKEN

from . import checkpoint as ckpt
from .config import TrainConfig, resolve_model_config, resolve_preprocessing_config
from .data import build_loader, build_training_data
from .distributed import DistInfo, all_reduce_sum, barrier
from .metrics import MetricsLogger
from .moments import Moments, plain
from .objective import Pretrainer, build_teacher
from .optim import build_optimizer, build_scheduler
from .sample_randomness import MaskMaker
from .samplers import LengthGroupedBatchSampler, ShardedSampler
from .sources import read_texts

log = logging.getLogger(__name__)


class TrainingStopped(D2VError):
    """The collapse guard stopped the run (``objective.collapse.stop``)."""

    type = "training_stopped"
    default_code = "collapse"
    exit_code = 6


class Trainer:
    """Builds everything from a ``TrainConfig`` and runs the loop.

    Args:
        cfg: the full training config (already validated).
        info: this process's ``DistInfo``.
        resume: a step directory / run directory to resume from, or None.
    """

    def __init__(self, cfg: TrainConfig, info: DistInfo, *, resume: str | Path | None = None) -> None:
        self.cfg = cfg
        self.info = info
        self.device = info.device
        self.out_dir = Path(cfg.run.out_dir)
        self.resume_from = resume
        self.step = 0
        self.micro_batches = 0  # consumed per rank: the data position
        self.skipped = 0
        self.loss_avg: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.metrics: MetricsLogger | None = None
        self._loader_iter = None

    # ------------------------------------------------------------------------------------------- setup

    def setup(self) -> Trainer:
        """Build everything, in this order (the RNG draws depend on it), and resume if asked to."""
        cfg = self.cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed)  # identical initialisation on every rank
        self.out_dir.mkdir(parents=True, exist_ok=True)
        docs, tokenizer, pre = self._setup_preprocessing()
        self._setup_model()
        self._setup_optimizer()
        self._setup_resume()
        self._setup_ddp()
        n_samples = self._setup_data(pre, tokenizer, docs)
        self._setup_logging(n_samples)
        return self

    def _setup_preprocessing(self):
        """Resolved configs and ``(docs, tokenizer, preprocessor)``; docs and tokenizer are None but for text."""
        cfg = self.cfg
        docs, tokenizer, self.tokenizer_file = None, None, None
        if cfg.modality == "text":
            docs = read_texts(cfg.data.path, cfg.data.text_field)
            tokenizer = self._tokenizer(docs)
        vocab = tokenizer.get_vocab_size(with_added_tokens=True) if tokenizer is not None else None
        self.model_cfg = resolve_model_config(cfg, vocab_size=vocab)
        self.pre_cfg = resolve_preprocessing_config(cfg, self.model_cfg)
        self.embedding_cfg = default_embedding_config(cfg.modality, self.model_cfg.transformer.depth)
        return docs, tokenizer, self._preprocessor(tokenizer)

    def _setup_model(self) -> None:
        """The student encoder, the pretraining objective (head + loss) around it, and the EMA teacher."""
        cfg = self.cfg
        self.model = Data2VecModel(self.model_cfg).to(self.device)
        self.pretrainer = Pretrainer(self.model, cfg.objective, seed=cfg.run.seed, precision=cfg.run.precision)
        self.pretrainer.to(self.device)
        self.teacher = build_teacher(self.model, cfg.objective, cfg.run.max_steps)

    def _setup_optimizer(self) -> None:
        """AdamW over the objective's parameters and the lr schedule."""
        cfg = self.cfg
        self.optimizer = build_optimizer([self.pretrainer], cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.run.max_steps, cfg.optim)

    def _setup_resume(self) -> None:
        """Load the resume checkpoint (if any), seed this rank's dropout stream, then restore the saved RNGs."""
        if self.resume_from is not None:
            self._load(ckpt.resolve_resume(self.resume_from))
        torch.manual_seed(self.cfg.run.seed + 1_000_003 * (self.info.rank + 1) + self.step)  # dropout stream per rank
        if self.resume_from is not None:
            self._restore_rng()

    def _setup_ddp(self) -> None:
        """Wrap the objective in ``DistributedDataParallel`` when running distributed (``self.ddp``, else None)."""
        self.ddp = None
        if self.info.distributed:
            layerdrop = self.model_cfg.transformer.layerdrop > 0
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.pretrainer, device_ids=device_ids, find_unused_parameters=layerdrop)

    def _setup_data(self, pre, tokenizer, docs) -> int:
        """Masks, the training dataset and this rank's loader from the data position; returns the sample count."""
        cfg, info = self.cfg, self.info
        masks = self._mask_maker(tokenizer)
        data = build_training_data(cfg, pre, masks, self.model_cfg, docs)
        self.tokens_per_sample = data.tokens_per_sample
        if self.resume_from is None:
            self.skipped += data.excluded  # left out up front (a resumed run restored its count)
        common = dict(rank=info.rank, world_size=info.world_size, seed=cfg.run.seed, shuffle=cfg.data.shuffle,
                      start_batch=self.micro_batches)  # fmt: skip
        if data.sizes is not None:
            sampler = LengthGroupedBatchSampler(data.sizes, max_tokens=cfg.data.max_tokens, **common)
        else:
            sampler = ShardedSampler(len(data.dataset), batch_size=cfg.data.batch_size, **common)
        self.loader = build_loader(
            data.dataset, sampler, data.collate, num_workers=cfg.data.num_workers, seed=cfg.run.seed, rank=info.rank
        )
        return len(data.dataset)

    def _setup_logging(self, n_samples: int) -> None:
        """Rank 0 writes ``train_config.yaml`` and logs the run's shape; every rank gets its ``MetricsLogger``."""
        cfg, info = self.cfg, self.info
        if info.is_main:
            (self.out_dir / "train_config.yaml").write_text(yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False))
            n_params = sum(p.numel() for p in self.model.parameters())
            if cfg.data.max_tokens:
                batch = f"<= {cfg.data.max_tokens} units x {cfg.optim.grad_accum} x {info.world_size} (data.max_tokens)"
            else:
                batch = f"{self.global_batch} ({cfg.data.batch_size} x {cfg.optim.grad_accum} x {info.world_size})"
            log.info(
                "%s %s: %.2fM encoder params, %d samples, global batch %s, %d steps -> %s",
                cfg.modality, cfg.objective.version, n_params / 1e6, n_samples, batch, cfg.run.max_steps, self.out_dir,
            )  # fmt: skip
        self.metrics = MetricsLogger(
            self.out_dir,
            total_steps=cfg.run.max_steps,
            initial_step=self.step,
            enabled=info.is_main,
            tensorboard=cfg.run.tensorboard,
            progress=cfg.run.progress,
        )

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step with fixed-size batches (with ``data.max_tokens`` it varies per step)."""
        return self.cfg.data.batch_size * self.cfg.optim.grad_accum * self.info.world_size

    def _tokenizer(self, docs: list[str]):
        """The given ``data.tokenizer``, the run's own ``tokenizer.json`` (resume), or a new byte-level BPE."""
        cfg = self.cfg
        path = Path(cfg.data.tokenizer) if cfg.data.tokenizer else self.out_dir / "tokenizer.json"
        if not path.is_file():
            if self.info.is_main:
                log.info(
                    "training a byte-level BPE tokenizer (vocab %d) on %d documents", cfg.data.vocab_size, len(docs)
                )
                train_bpe_tokenizer(docs, cfg.data.vocab_size, path)
            barrier(self.info)
        self.tokenizer_file = path
        return load_tokenizer(path)

    def _preprocessor(self, tokenizer):
        if self.cfg.modality == "text":
            # The corpus is tokenised whole and cut into blocks: no per-document length limit here.
            corpus_cfg = dataclasses.replace(self.pre_cfg, max_length=2**62)
            return TextPreprocessor(corpus_cfg, tokenizer=tokenizer)
        if self.cfg.modality == "audio":
            return AudioPreprocessor(self.pre_cfg, max_seconds=self.cfg.data.max_file_seconds)
        return ImagePreprocessor(self.pre_cfg)

    def _mask_maker(self, tokenizer) -> MaskMaker:
        obj = self.cfg.objective
        clones = obj.clone_batch if obj.version == "v2" else 1
        grid = None
        if self.cfg.modality == "image":
            grid = (self.model_cfg.image.grid_size,) * 2
        if tokenizer is None:
            return MaskMaker(obj.mask, clones, self.cfg.run.seed, grid=grid)
        ids = [tokenizer.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")]
        return MaskMaker(
            obj.mask,
            clones,
            self.cfg.run.seed,
            mask_id=tokenizer.token_to_id(MASK_TOKEN),
            vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
            pad_id=self.pre_cfg.pad_id,
            special_ids=tuple(i for i in ids if i is not None),
        )

    # -------------------------------------------------------------------------------------------- loop

    def _next_batch(self) -> dict[str, Any]:
        if self._loader_iter is None:
            self._loader_iter = iter(self.loader)
        batch = next(self._loader_iter)
        self.micro_batches += 1
        self.skipped += batch["skipped"]
        out = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out["keys"] = batch["keys"]  # stays on the CPU (seeds)
        out["_device"] = self.device
        return out

    def train(self, until: int | None = None) -> dict[str, float]:
        """Train to ``run.max_steps``, or pause after step ``until`` (saved, as a preemption would leave it)."""
        cfg = self.cfg
        stop = cfg.run.max_steps if until is None else min(until, cfg.run.max_steps)
        module = self.ddp or self.pretrainer
        self.pretrainer.train()
        tick = time.perf_counter()
        while self.step < stop:
            batches = [self._next_batch() for _ in range(cfg.optim.grad_accum)]
            sizes = all_reduce_sum(self._batch_sizes(batches), self.info).tolist()  # masked, samples, tokens
            count = sizes[0]
            norm = max(count, 1.0) / self.info.world_size  # DDP averages gradients over ranks
            stats = Moments(self.model.dim)
            for i, batch in enumerate(batches):
                sync = self.ddp is None or i == len(batches) - 1
                with nullcontext() if sync else self.ddp.no_sync():
                    out = module(batch, self.teacher, norm)
                    out.loss.backward()
                stats.add(out)
            grad_norm = self._optimizer_step()
            self.step += 1
            tau = self.teacher.update(self.model, self.step)
            now = time.perf_counter()
            values = self._reduce(stats, sizes, grad_norm, tau, now - tick, batches)
            tick = now
            self._collapse_guard(values)
            self.last_metrics = values
            self.metrics.progress(self.step, values)
            if self.step % cfg.run.log_every == 0 or self.step == cfg.run.max_steps or self.step == 1:
                self.metrics.log(self.step, values)
            if self.step % cfg.run.save_every == 0 or self.step in (cfg.run.max_steps, stop):
                self.save()
        return self.last_metrics

    def _optimizer_step(self) -> float:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip = self.cfg.optim.clip_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _batch_sizes(self, batches: list[dict[str, Any]]) -> torch.Tensor:
        """This rank's (masked positions, samples, tokens) of one optimizer step, for one all-reduce."""
        clones = self.pretrainer.clones
        masked = sum(int(b["mask"].sum()) for b in batches)
        samples = sum(int(b["keys"].shape[0]) for b in batches)
        tokens = sum(int(b["mask"].shape[1]) * b["mask"].shape[0] // clones for b in batches)
        return torch.tensor([float(masked), float(samples), float(tokens)], dtype=torch.float64)

    def _reduce(self, stats: Moments, sizes: list[float], grad_norm: float, tau: float, dt: float, batches) -> dict:
        """One all-reduce of the step's sums -> global loss, target/prediction std (fairseq ``compute_var``);
        ``sizes``: the step's all-reduced (masked positions, samples, tokens)."""
        packed = all_reduce_sum(stats.pack(), self.info)
        loss_sum, target_std, pred_std = Moments.unpack(packed, self.model.dim)
        clones = self.pretrainer.clones
        count, samples, tokens = sizes
        loss = loss_sum / max(count, 1.0)
        self.loss_avg = loss if self.loss_avg is None else 0.9 * self.loss_avg + 0.1 * loss
        return {
            "loss": loss,
            "target_std": target_std,
            "pred_std": pred_std,
            "lr": self.scheduler.get_last_lr()[0],
            "tau": tau,
            "grad_norm": grad_norm,
            "masked_frac": count / max(1, tokens * clones),
            "samples_per_s": samples / dt,
            "masked_preds_per_s": samples * clones / dt,
            "tokens_per_s": tokens / dt,
            "skipped_files": self.skipped,
            "epoch": int(batches[-1]["keys"][-1, 0]),
        }

    def _collapse_guard(self, values: dict[str, float]) -> None:
        c = self.cfg.objective.collapse
        if self.step < c.check_after_step:
            return
        problems = []
        if values["target_std"] < c.min_target_std:
            problems.append(f"target std {values['target_std']:.4f} < {c.min_target_std}")
        if values["pred_std"] < c.min_pred_std:
            problems.append(f"prediction std {values['pred_std']:.4f} < {c.min_pred_std}")
        if not problems:
            return
        message = (
            f"representation collapse suspected at step {self.step}: {'; '.join(problems)} "
            "(data2vec spec §1.5; try a lower optim.lr or a longer EMA anneal)"
        )
        if c.stop:
            self.save()  # every rank: the values are global, so all ranks stop here together
            raise TrainingStopped(message + "; stopped (objective.collapse.stop=true)")
        if self.info.is_main and (self.step % self.cfg.run.log_every == 0 or self.step == c.check_after_step):
            log.warning(message)

    # ------------------------------------------------------------------------------------- checkpoints

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0); every rank contributes its RNG state."""
        rng = [ckpt.rng_state()]
        if self.info.distributed:
            gathered: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if not self.info.is_main:
            return None
        state = {
            "step": self.step,
            "micro_batches": self.micro_batches,
            "skipped": self.skipped,
            "loss_avg": self.loss_avg,
            "world_size": self.info.world_size,
            "head": self.pretrainer.head.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "config": plain(self.cfg.to_dict()),
        }
        source = {"trainer": "d2v train", "run": str(self.out_dir), "step": self.step, "recipe": self.cfg.name}
        return ckpt.save_training_checkpoint(
            self.out_dir / "checkpoints",
            self.step,
            model=self.model,
            preprocessing=self.pre_cfg,
            embedding=self.embedding_cfg,
            train_state=state,
            tokenizer_json=self.tokenizer_file,
            source=source,
            keep_last=self.cfg.run.keep_last,
            metric=self.loss_avg if self.cfg.run.keep_best else None,
        )

    def _load(self, step_dir: Path) -> None:
        state = ckpt.load_train_state(step_dir, map_location=self.device)
        ckpt.load_model_weights(step_dir, self.model)
        self.pretrainer.head.load_state_dict(state["head"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.micro_batches = int(state["micro_batches"])
        self.skipped = int(state["skipped"])
        self.loss_avg = state["loss_avg"]
        self._rng_states = state["rng"]
        if int(state["world_size"]) != self.info.world_size:
            log.warning(
                "resuming a %d-process run with %d processes: the data order changes",
                state["world_size"],
                self.info.world_size,
            )
        if self.info.is_main:
            log.info("resumed from %s (step %d)", step_dir, self.step)

    def _restore_rng(self) -> None:
        states = self._rng_states
        if len(states) == self.info.world_size:
            ckpt.set_rng_state(states[self.info.rank])

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.info.is_main and (self.out_dir / "metrics.jsonl").is_file():
            from .plots import plot_run

            try:
                path = plot_run(self.out_dir)
                log.info("wrote %s", path)
            except D2VError as exc:
                log.warning("no plot: %s", exc.message)
        self._loader_iter = None
