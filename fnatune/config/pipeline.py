"""The task-independent part of a pipeline's schema (:class:`PipelineBase`); :mod:`fnatune.config` adds the
task registry's part. Split so that :mod:`fnatune.tasks` can name the config's type without importing the
module that looks tasks up."""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from fnatune.config.run import ResourcesCfg, SweepCfg, TrackingCfg, TuneCfg, VariantCfg
from fnatune.config.sections import (
    DataCfg,
    EvaluateCfg,
    ExportCfg,
    FinetuneCfg,
    PretrainCfg,
    RemapCfg,
    SearchCfg,
    Section,
    SeedCfg,
)


class PipelineBase(Section):
    """One adaptation run's settings, whatever its task: :class:`fnatune.config.PipelineCfg` adds what needs the task
    registry (the task's defaults and section). Task backends type their config with this class, so the task
    registry and the config schema do not depend on each other."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    task: str
    seed: int = 1
    device: str = "cpu"
    # which implementation runs the task's model, data and metric: torchvision (default; nothing compiled) or mm
    # (OpenMMLab, the `mm` extra); the search, remapping and loops are the same on both
    backend: str = "torchvision"
    space: str
    arch: str | None = None           # with search.enabled false: an arch JSON, or "seed" (the seed's own layout)
    seed_net: SeedCfg = Field(default_factory=SeedCfg)
    pretrain: PretrainCfg = Field(default_factory=PretrainCfg)
    data: DataCfg
    remap: RemapCfg = Field(default_factory=RemapCfg)
    search: SearchCfg = Field(default_factory=SearchCfg)
    finetune: FinetuneCfg = Field(default_factory=FinetuneCfg)
    evaluate: EvaluateCfg = Field(default_factory=EvaluateCfg)
    export: ExportCfg = Field(default_factory=ExportCfg)
    tracking: TrackingCfg = Field(default_factory=TrackingCfg)
    variants: list[VariantCfg] = Field(default_factory=list)
    resources: ResourcesCfg = Field(default_factory=ResourcesCfg)
    tune: TuneCfg = Field(default_factory=TuneCfg)
    sweep: SweepCfg | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not v.startswith("cuda"):
            raise ValueError(f"expected 'cpu', 'cuda' or 'cuda:N', got '{v}'")
        return v

    @model_validator(mode="after")
    def _arch_source(self) -> PipelineBase:
        if not self.search.enabled and self.arch is None:
            raise ValueError("search.enabled is false, so 'arch' must name an arch JSON file or 'seed'")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if self.variants and self.sweep is not None:
            raise ValueError("use either 'variants' (named ablations) or 'sweep', not both in one pipeline")
        return self

    def section(self, name: str) -> Any:
        """A task's own section by its name (detection's ``detector``), or None where the run has none."""
        return getattr(self, name, None)
