"""The sections of a pipeline config that say how a run is carried out: tracking, Ray resources and Tune's
settings, sweeps and named variants (torch-free, pydantic)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fnatune.config.sections import Section

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")


class TrackingCfg(Section):
    uri: str | None = None           # default: sqlite:///<cwd>/mlflow.db
    experiment: str = "fnatune"
    enabled: bool = True


class ResourcesCfg(Section):
    """What one trial asks of the Ray cluster. ``workers`` > 1 runs the search and the fine-tune data-parallel
    inside the trial (Ray Train; each worker gets ``cpu``/``gpu``, so the trial holds workers x that)."""

    cpu: float | None = Field(None, gt=0)  # None: all CPUs of this machine for one run, 1 per trial in a sweep
    gpu: float = Field(0.0, ge=0)
    workers: int = Field(1, ge=1)


class TuneCfg(Section):
    """How Ray Tune runs the trials: retries from the last checkpoint, how long a trial may wait for
    resources before the run stops with a message (instead of waiting forever), and how often a stage
    checkpoint is also copied into Tune's storage (``checkpoint_every_s``: at most once per that many
    seconds; 0 copies every one). The copy is what a retry on another node restores from; a retry on the
    same node, and ``fnatune resume``, use the trial directory's own newer checkpoint."""

    retries: int = Field(2, ge=0)
    pending_timeout_s: float = Field(600.0, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_every_s: float = Field(60.0, ge=0)


class AshaCfg(Section):
    """Asynchronous successive halving over the search epochs (``metric`` as reported each epoch)."""

    metric: str = "search_arch_task_loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class SweepCfg(Section):
    """Many trials of one pipeline. ``params`` maps dotted config keys to values: a list (grid: every
    combination) or, for optuna, a distribution ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
    ``{randint: [lo, hi]}`` (hi exclusive) or ``{choice: [...]}``."""

    method: Literal["grid", "optuna"] = "grid"
    params: dict[str, Any] = Field(min_length=1)
    objectives: list[Literal["metric", "cost"]] = Field(default_factory=lambda: ["metric"], min_length=1, max_length=2)
    metric: str | None = None          # default: the task's metric (seg mIoU, det bbox_mAP)
    sampler: Literal["tpe", "nsga2"] | None = None  # default: tpe for one objective, nsga2 for two
    num_samples: int = Field(4, ge=1)  # optuna: trials to draw (grid: ignored)
    max_concurrent: int | None = Field(None, ge=1)
    asha: AshaCfg | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _params(self) -> SweepCfg:
        for key, spec in self.params.items():
            if self.method == "grid" and not (isinstance(spec, list) and spec):
                raise ValueError(f"params.{key}: a grid sweep needs a non-empty list of values, got {spec!r}")
            if self.method == "optuna" and not (isinstance(spec, list) and spec) and not (
                    isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
                raise ValueError(f"params.{key}: expected a list of choices or one of "
                                 f"{{{', '.join(f'{d}: [...]' for d in DISTRIBUTIONS)}}}, got {spec!r}")
        if self.sampler == "tpe" and len(self.objectives) > 1:
            raise ValueError("two objectives need sampler nsga2 (TPE here optimises one objective)")
        if self.asha is not None and len(self.objectives) > 1:
            raise ValueError("asha stops trials on one metric; it cannot be combined with two objectives")
        return self


class PaperValueCfg(Section):
    """The paper's number for a variant, printed beside ours in the ablation summary."""

    value: float
    ref: str = Field(min_length=1)   # where it comes from, e.g. "Table 5, remap/remap" (FNA_SPEC §13.4)


class VariantCfg(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    set: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    paper: PaperValueCfg | None = None
