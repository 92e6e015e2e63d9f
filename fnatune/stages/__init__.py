"""The stages of an adaptation run, per task, in order (FNA_SPEC §1):

data -> seed -> supernet (remap) -> search (or a fixed arch) -> target (remap again, from the seed)
-> finetune -> evaluate -> export.
The learning stages are task-independent; each task (seg, det) supplies a backend
(:mod:`fnatune.stages.backend`).
"""
from __future__ import annotations

from fnatune.config import PipelineCfg
from fnatune.pipeline import Stage


def stages_for(cfg: PipelineCfg) -> list[Stage]:
    from fnatune.stages import common, learn

    stages: list[Stage] = [("data", learn.stage_data), ("seed", common.stage_seed)]
    if cfg.search.enabled:
        stages += [("supernet", common.stage_supernet), ("search", learn.stage_search)]
    else:
        stages += [("arch", learn.stage_fixed_arch)]
    stages += [("target", common.stage_target), ("finetune", learn.stage_finetune),
               ("evaluate", learn.stage_evaluate), ("export", common.stage_export)]
    return stages
