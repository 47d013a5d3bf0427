"""fairseq side of the objective parity tests (``tests/training/test_fairseq_parity.py``). Runs INSIDE
``.venv-fairseq`` through ``fairseq_oracle.call(this_file, "objective", inputs, params)``; never imported by
the project's environment.

``objective``: load a checkpoint written by the oracle (student + EMA teacher), run fairseq's own training
forward on the given batch with the given masks (``mask_indices`` for v1 audio, ``<mask>`` ids + the original
ids as ``target_tokens`` for v1 text, ``precomputed_mask`` for 2.0), in eval mode (no dropout, no layerdrop;
the decoder noise is off through the checkpoint's ``mask_noise_std: 0``), and capture the regression
predictions and targets where fairseq computes the loss (its ``F.mse_loss`` / ``F.smooth_l1_loss`` calls).
With ``params["step"]``: back-propagate the criterion's loss, divide the gradients by the sample size and clip
them as fairseq's trainer does, take one step of fairseq's own optimizer (built from ``params["optimizer"]``:
``adam`` or ``composite``) and run ``set_num_updates`` (the EMA update), then save the model as a checkpoint
(``params["out"]``) so the test can convert and compare every parameter.
"""

from __future__ import annotations


def _capture_losses(captured: list):
    """Patch ``torch.nn.functional``'s two regression losses to record ``(prediction, target)``; returns the
    undo function."""
    import torch.nn.functional as F

    originals = {"mse_loss": F.mse_loss, "smooth_l1_loss": F.smooth_l1_loss}

    def wrap(name):
        def loss(x, y, *args, **kwargs):
            captured.append((x.detach().clone(), y.detach().clone()))
            return originals[name](x, y, *args, **kwargs)

        return loss

    for name in originals:
        setattr(F, name, wrap(name))

    def undo():
        for name, fn in originals.items():
            setattr(F, name, fn)

    return undo


def _forward(model, kind: str, inputs: dict):
    if kind == "audio_v1":
        return model(inputs["source"], mask_indices=inputs["mask"].bool())
    if kind == "text_v1":
        return model(inputs["source"], target_tokens=inputs["target"])
    return model(inputs["source"], precomputed_mask=inputs["mask"].bool())


def _optimizer(model, spec: dict):
    """fairseq's own optimizer over the model's trainable parameters, as ``fairseq.optim.build_optimizer``
    builds it from a run's config (``spec``: the ``optimizer`` section, ``lr``, ``clip_norm``)."""
    from fairseq.optim import build_optimizer
    from omegaconf import OmegaConf

    adam = {"_name": "adam", "adam_betas": spec["betas"], "adam_eps": spec["eps"],
            "weight_decay": spec["weight_decay"], "tpu": False, "lr": [spec["lr"]]}  # fmt: skip
    if spec["name"] == "composite":
        section = {"_name": "composite", "dynamic_groups": True, "groups": {"default": {
            "lr_float": spec["lr"], "optimizer": adam,
            "lr_scheduler": {"_name": "fixed", "lr": [spec["lr"]], "warmup_updates": 0}}}}  # fmt: skip
    else:
        section = adam
    root = OmegaConf.create({"common": {"tpu": False}, "optimization": {"lr": [spec["lr"]]}, "optimizer": section})
    params = [p for p in model.parameters() if p.requires_grad]
    return build_optimizer(root.optimizer, params)


def objective(harness, inputs: dict, params: dict) -> dict:
    import torch

    kind = params["kind"]
    model, root = harness.load(kind, params["path"], dict_path=params.get("dict_path"))
    model.eval()
    captured: list = []
    undo = _capture_losses(captured)
    try:
        result = _forward(model, kind, inputs)
    finally:
        undo()
    losses = result["losses"]
    total = sum(v.sum() for v in losses.values())
    sample_size = int(result["sample_size"])
    out = {"loss_sum": total.detach().double(), "sample_size": torch.tensor(sample_size)}
    for name, value in losses.items():
        out[f"loss_{name}"] = value.detach().sum().double()
    for i, (pred, target) in enumerate(captured):
        out[f"pred_{i}"], out[f"target_{i}"] = pred, target
    if params.get("step"):
        spec = params["optimizer"]
        optimizer = _optimizer(model, spec)
        optimizer.zero_grad()
        total.backward()
        optimizer.multiply_grads(1.0 / sample_size)  # fairseq trainer: numer / sample_size, one process
        grad_norm = optimizer.clip_grad_norm(spec["clip_norm"])
        optimizer.step()
        model.train()  # set_num_updates updates the EMA only in training mode
        model.set_num_updates(params["num_updates"])
        out["grad_norm"] = torch.as_tensor(float(grad_norm))
        out["groups"] = torch.tensor(
            [[len(g["params"]), g["weight_decay"]] for g in optimizer.param_groups], dtype=torch.float64
        )
        harness.save_checkpoint(model, root, params["out"])
    return out
