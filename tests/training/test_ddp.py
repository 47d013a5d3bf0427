"""DDP on CPU: 2 gloo processes (``d2v train --nproc 2``, i.e. torchrun) == 1 process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]

# No dropout / layerdrop (their RNG streams are per process by design); everything else (crops, flips, masks,
# decoder noise) is drawn per sample, so it does not depend on the number of processes. The v2 image CLS term is
# weighted by the per-process masked count, as in fairseq, so it is switched off here.
CASES = {
    "tiny-image-v2": ["optim.grad_accum=2", "objective.cls_loss=0"],
    # Fixed-size batches (max_tokens 0) and no equal-count cut of the span masks: N x B equals 1 x N*B only when
    # nothing depends on the per-process batch (the recipe's length-grouped batches are sharded whole, and
    # fairseq's require_same_masks cuts each GPU's batch to its own minimum; tests/training/test_samplers.py,
    # test_recipe_fidelity.py).
    "tiny-audio-v1": ["data.max_seconds=0.5", "model.transformer.dropout=0", "model.transformer.attn_dropout=0",
                      "model.audio.dropout=0", "data.max_tokens=0",
                      "objective.mask.require_same_masks=false"],  # clips >= 0.6 s: every crop is 0.5 s
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(CASES))
def test_two_gloo_processes_match_one(h, tiny_data, tmp_path, recipe):
    modality = recipe.split("-")[1]
    common = [f"data.path={tiny_data[modality]}", "run.max_steps=3", "run.progress=false", "run.tensorboard=false",
              "run.log_every=1", *CASES[recipe]]  # fmt: skip
    single = tmp_path / "single"
    h.train(h.tiny_config(recipe, tiny_data[modality], single, *common, "data.batch_size=4"))

    double = tmp_path / "double"
    cmd = [sys.executable, "-m", "d2v.cli", "train", "--config", recipe, "--nproc", "2", "--out", str(double), *common,
           "data.batch_size=2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = h.losses(single), h.losses(double)
    assert len(a) == len(b) == 3
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)
    wa = load_file(str(single / "checkpoints" / "latest" / "model.safetensors"))
    wb = load_file(str(double / "checkpoints" / "latest" / "model.safetensors"))
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)
