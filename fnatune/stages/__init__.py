"""The stages of an adaptation run, per task, in order (FNA_SPEC §1):

data -> seed -> supernet (remap) -> search (or a fixed arch) -> target (remap again, from the seed)
-> finetune -> evaluate -> export.
"""
from __future__ import annotations

from fnatune.config import PipelineCfg
from fnatune.pipeline import Stage


def stages_for(cfg: PipelineCfg) -> list[Stage]:
    from fnatune.stages import common, seg

    if cfg.task != "seg":  # the schema admits only implemented tasks; this guards future additions
        raise NotImplementedError(cfg.task)
    stages: list[Stage] = [("data", seg.stage_data), ("seed", common.stage_seed)]
    if cfg.search.enabled:
        stages += [("supernet", common.stage_supernet), ("search", seg.stage_search)]
    else:
        stages += [("arch", seg.stage_fixed_arch)]
    stages += [("target", common.stage_target), ("finetune", seg.stage_finetune), ("evaluate", seg.stage_evaluate),
               ("export", common.stage_export)]
    return stages
