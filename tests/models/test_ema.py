"""EMA teacher: schedule, update math, sharing rules, frozen teacher, fp32 state, checkpoint round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from d2v.core.errors import ConfigError
from d2v.models.ema import EMAConfig, EMATeacher, ema_preset, matches_any


class Tiny(nn.Module):
    """Stands in for ``Data2VecModel``: a ``front_end`` with a ``pos_conv`` and a ``transformer``."""

    def __init__(self) -> None:
        super().__init__()
        self.front_end = nn.ModuleDict(
            {"proj": nn.Linear(3, 4), "pos_conv": nn.Conv1d(4, 4, 3, padding=1), "context_norm": nn.LayerNorm(4)}
        )
        self.transformer = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.register_buffer("steps", torch.zeros(()))


def perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype))


def test_decay_schedule() -> None:
    t = EMATeacher(Tiny(), EMAConfig(tau0=0.999, tau_end=0.9999, anneal_steps=1000))
    assert t.decay_at(0) == pytest.approx(0.999)
    assert t.decay_at(500) == pytest.approx(0.99945)
    assert t.decay_at(1000) == pytest.approx(0.9999)
    assert t.decay_at(10_000) == pytest.approx(0.9999)
    const = EMATeacher(Tiny(), ema_preset("v1_vision", tau0=0.9998, tau_end=0.9998, anneal_steps=0))
    assert const.decay_at(0) == const.decay_at(10**6) == 0.9998


def test_teacher_is_frozen_eval_copy() -> None:
    student = Tiny().train()
    t = EMATeacher(student, EMAConfig())
    assert not t.module.training
    assert all(not p.requires_grad for p in t.module.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (n, a), (_, b) in zip(student.named_parameters(), t.module.named_parameters(), strict=True):
        assert torch.equal(a, b), n
        assert a.data_ptr() != b.data_ptr()


def test_update_math_and_copy_keys() -> None:
    student = Tiny()
    cfg = EMAConfig(tau0=0.9, tau_end=0.99, anneal_steps=10, copy_keys=("front_end",), copy_exclude=("*.pos_conv.*",))
    t = EMATeacher(student, cfg)
    before = {n: p.clone() for n, p in t.module.named_parameters()}
    perturb(student, 0)
    student.steps.fill_(7.0)
    d = t.update(student, step=5)
    assert d == pytest.approx(0.945)
    sp = dict(student.named_parameters())
    for n, p in t.module.named_parameters():
        if n.startswith("front_end.") and ".pos_conv." not in n:
            assert torch.equal(p, sp[n]), n  # shared: copied verbatim
        else:  # transformer and pos_conv (excluded from the copy) are averaged
            expected = before[n] * d + sp[n] * (1 - d)
            torch.testing.assert_close(p, expected, rtol=0, atol=1e-7)
            assert not torch.equal(p, sp[n])
    assert t.module.steps.item() == 7.0  # buffers copied


def test_frozen_student_params_are_copied() -> None:
    student = Tiny()
    student.transformer[1].requires_grad_(False)
    t = EMATeacher(student, EMAConfig(tau0=0.5, tau_end=0.5, anneal_steps=0))
    perturb(student, 1)
    t.update(student, 0)
    assert torch.equal(t.module.transformer[1].weight, student.transformer[1].weight)
    assert not torch.equal(t.module.transformer[0].weight, student.transformer[0].weight)


def test_decay_one_freezes_teacher() -> None:
    student = Tiny()
    t = EMATeacher(student, EMAConfig(tau0=0.999, tau_end=1.0, anneal_steps=10, copy_keys=("front_end",)))
    perturb(student, 2)
    t.update(student, 3)
    snapshot = {n: p.clone() for n, p in t.module.named_parameters()}
    perturb(student, 3)
    assert t.update(student, 10) == 1.0
    for n, p in t.module.named_parameters():
        assert torch.equal(p, snapshot[n]), n  # even copy_keys are left alone


def test_fp32_state_with_bf16_student() -> None:
    student = Tiny().to(torch.bfloat16)
    t = EMATeacher(student, EMAConfig(tau0=0.999, tau_end=0.999, anneal_steps=0))
    w0 = t.module.transformer[0].weight.float().clone()
    with torch.no_grad():
        student.transformer[0].weight.add_(1.0)
    w1 = student.transformer[0].weight.float()  # the bf16 student weight, exactly
    for step in range(3):
        t.update(student, step)
    state = t.state_dict()["fp32_state"]["transformer.0.weight"]
    assert state.dtype == torch.float32
    assert t.module.transformer[0].weight.dtype == torch.bfloat16
    # steps of ~0.001 are below bf16 resolution near 1, but the fp32 state accumulates them
    expected = w0
    for _ in range(3):
        expected = expected * 0.999 + w1 * 0.001
    torch.testing.assert_close(state, expected, rtol=0, atol=1e-5)
    assert (state - w0).abs().min().item() > 0.002  # moved ~3 * 0.001 * (w1 - w0) ~ 0.003 everywhere
    torch.testing.assert_close(t.module.transformer[0].weight, state.to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_bit_exact(dtype: torch.dtype) -> None:
    cfg = EMAConfig(tau0=0.99, tau_end=0.999, anneal_steps=20, copy_keys=("front_end",))
    student = Tiny().to(dtype)
    a = EMATeacher(student, cfg)
    for step in range(3):
        perturb(student, step)
        a.update(student, step)
    b = EMATeacher(Tiny().to(dtype), cfg)
    b.load_state_dict(a.state_dict())
    for step in range(3, 6):
        perturb(student, step)
        a.update(student, step)
        b.update(student, step)
    for (n, pa), (_, pb) in zip(a.module.named_parameters(), b.module.named_parameters(), strict=True):
        assert torch.equal(pa, pb), n
    for n, s in a.state_dict()["fp32_state"].items():
        assert torch.equal(s, b.state_dict()["fp32_state"][n])


def test_missing_student_params_raise_extra_are_ignored() -> None:
    t = EMATeacher(Tiny().transformer, EMAConfig())
    bigger = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))  # extra "decoder" param ignored
    t.update(bigger, 0)
    with pytest.raises(ConfigError, match="missing"):
        t.update(nn.Sequential(nn.Linear(4, 4)), 0)


SCHEDULE = {"tau0": 0.999, "tau_end": 0.99999, "anneal_steps": 123}


def test_presets_and_patterns() -> None:
    assert matches_any("front_end.pos_conv.0.weight", ("front_end",))
    assert not matches_any("front_end_x.weight", ("front_end",))
    assert matches_any("a.pos_conv.0.weight", ("*.pos_conv.*",))
    v1a = ema_preset("v1_audio", tau0=0.999, tau_end=0.9999, anneal_steps=30_000)
    assert (v1a.tau0, v1a.tau_end, v1a.anneal_steps, v1a.copy_keys) == (0.999, 0.9999, 30_000, ("front_end",))
    v2a = ema_preset("v2_audio", **SCHEDULE)
    assert v2a.anneal_steps == 123 and v2a.copy_exclude == ("front_end.pos_conv", "front_end.context_norm")
    t = EMATeacher(Tiny(), v2a)
    params = dict(Tiny().named_parameters())
    assert t.is_copied("front_end.proj.weight", params["front_end.proj.weight"])
    assert not t.is_copied("front_end.pos_conv.weight", params["front_end.pos_conv.weight"])
    assert not t.is_copied("front_end.context_norm.bias", params["front_end.context_norm.bias"])
    v1 = EMATeacher(Tiny(), ema_preset("v1_audio", **SCHEDULE))
    assert v1.is_copied("front_end.pos_conv.weight", params["front_end.pos_conv.weight"])  # ema_layers_only
    assert not v1.is_copied("front_end.context_norm.weight", params["front_end.context_norm.weight"])
    assert not t.is_copied("transformer.0.weight", params["transformer.0.weight"])
    assert ema_preset("v2_image", **SCHEDULE).copy_keys == ()
    cfg = EMAConfig(**dataclasses.asdict(ema_preset("v1_text", **SCHEDULE)) | {"copy_keys": ["front_end"]})
    assert cfg.copy_keys == ("front_end",)
    with pytest.raises(ConfigError):
        EMAConfig(tau0=1.5)
