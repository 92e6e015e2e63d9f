"""The flow of an adaptation run (FNA_SPEC §1), one module per step, in order:

data -> seed -> supernet (remap) -> search (or a fixed arch) -> target (remap again, from the seed)
-> finetune -> evaluate -> export.

Each stage is task-independent: what differs per task comes from the run's task backend
(``ctx.backend``, :mod:`fnatune.tasks`). The framework that runs them is :mod:`fnatune.framework`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fnatune.config import PipelineCfg
    from fnatune.framework import Stage


def stages_for(cfg: PipelineCfg) -> list[Stage]:
    """The stages of ``cfg``'s run, in order."""
    from fnatune.stages import data, evaluate, export, finetune, remap, search, seed

    stages: list[Stage] = [("data", data.stage_data), ("seed", seed.stage_seed)]
    if cfg.search.enabled:
        stages += [("supernet", remap.stage_supernet), ("search", search.stage_search)]
    else:
        stages += [("arch", search.stage_fixed_arch)]
    stages += [("target", remap.stage_target), ("finetune", finetune.stage_finetune),
               ("evaluate", evaluate.stage_evaluate), ("export", export.stage_export)]
    return stages
