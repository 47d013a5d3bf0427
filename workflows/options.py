"""What ``d2v quickstart`` and ``d2v quality-report`` build: the shared options and their flag parsers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from d2v.core.contract import MODALITIES
from d2v.core.errors import ConfigError


@dataclass
class QuickstartOptions:
    store: Path | None = None  # None: the default store ($D2V_HOME/models)
    seed: int = 0
    steps_scale: float = 1.0  # multiplies each recipe's run.max_steps (reduced budgets for tests / CI)
    max_steps: int | None = None  # overrides every recipe's run.max_steps
    modalities: tuple[str, ...] = MODALITIES
    force: bool = False  # rebuild models that are already in the store
    overrides: dict[str, list[str]] = field(default_factory=dict)  # modality -> extra KEY=VALUE overrides
    variants: tuple[str, ...] = ()  # extra ONNX variants (int8, fp16, bf16); fp32 only when one misses its bar
    data_dir: Path | None = None
    threads: int = 0  # torch threads for training (0 = the recipe's run.threads)
    progress: bool = True
    export: bool = True  # False: checkpoint only (quality-report tuning runs; such a store is not servable)
    recipes: dict[str, str] = field(default_factory=dict)  # modality -> another base recipe (tuning runs)
    jobs: int = 0  # trainings side by side (0 = one per CPU core, at most one per model)

    def validate(self) -> None:
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ConfigError(f"--modalities: expected some of {', '.join(MODALITIES)}, got {list(self.modalities)}")
        if not self.steps_scale > 0:
            raise ConfigError(f"--steps-scale must be > 0, got {self.steps_scale}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")


def parse_overrides(items: Sequence[str], modalities: Sequence[str] = MODALITIES) -> dict[str, list[str]]:
    """``MODALITY:KEY=VALUE`` (one modality) or ``KEY=VALUE`` (all) -> ``{modality: [KEY=VALUE, ...]}``."""
    out: dict[str, list[str]] = {m: [] for m in modalities}
    for item in items:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in MODALITIES:
                raise ConfigError(f"--override {item!r}: {head!r} is not one of {', '.join(MODALITIES)}")
            if head in out:
                out[head].append(rest)
        else:
            for m in out:
                out[m].append(item)
    return out


def parse_recipes(items: Sequence[str]) -> dict[str, str]:
    """``MODALITY=RECIPE`` items -> ``{modality: recipe}``."""
    out = {}
    for item in items:
        modality, sep, recipe = item.partition("=")
        if not sep or modality not in MODALITIES or not recipe:
            raise ConfigError(f"--recipe {item!r}: expected MODALITY=RECIPE with MODALITY one of {MODALITIES}")
        out[modality] = recipe
    return out
