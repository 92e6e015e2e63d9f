"""Stage ``export``: the derived backbone with its fine-tuned weights to ONNX (checked with onnxruntime), its
picture, and the whole network's parameters and MAdds at the paper's resolution."""
from __future__ import annotations

from typing import Any

import torch

from fnatune.arch import Arch
from fnatune.framework import RunContext, StageHandle


def _seed_cost(ctx: RunContext) -> dict[str, float]:
    """The whole network's cost around the seed's own layout in the run's space (empty where the seed's ops
    are not candidates of the space)."""
    from fnatune.errors import ArchError
    from fnatune.space import get_space
    from fnatune.stages.seed import seed_of

    try:
        seed_arch = get_space(ctx.cfg.space).project(seed_of(ctx).arch)
    except ArchError:
        return {}
    cost = ctx.backend.whole_cost(seed_arch)
    return {k: cost[k] for k in ("params", "madds_paper_resolution") if k in cost}


def stage_export(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    from fnatune.cost import count_params
    from fnatune.export import export_onnx
    from fnatune.nets import ChildNet
    from fnatune.viz import arch_picture

    arch = Arch.load(ctx.run.arch_path)
    backbone = ChildNet(arch)
    backbone.load_state_dict(torch.load(ctx.path("finetune", "backbone"), map_location="cpu", weights_only=True))
    outputs: dict[str, str] = {}
    metrics: dict[str, float] = {}
    from fnatune.stages.seed import seed_layout

    pic = arch_picture(arch, st.dir / "arch.png", title=f"{ctx.cfg.name}: {arch.block_string()}",
                       reference=seed_layout(ctx), reference_label=f"seed ({ctx.cfg.seed_net.name})")
    outputs["picture"] = ctx.rel(pic)
    if ctx.cfg.export.onnx:
        size = ctx.cfg.export.input or ctx.backend.export_size()
        info = export_onnx(backbone, st.dir / "backbone.onnx", size, arch.skeleton.in_channels, ctx.cfg.export.opset)
        outputs["onnx"] = ctx.rel(st.dir / "backbone.onnx")
        metrics["onnxruntime_max_abs_diff"] = info["onnxruntime_max_abs_diff"]
        metrics["onnxruntime_max_rel_diff"] = info["onnxruntime_max_rel_diff"]
        st.log_artifact(st.dir / "backbone.onnx")
    metrics.update(ctx.backend.whole_cost(arch))
    metrics["backbone_params"] = float(count_params(backbone))
    seed = _seed_cost(ctx)
    metrics.update({f"seed_{k}": v for k, v in seed.items()})
    # the parent run's columns (arch tag, cost beside the seed's) are set once the run ends: pipeline._headline
    for p in (ctx.run.arch_path, pic, ctx.path("finetune", "backbone")):
        st.log_artifact(p)
    st.tracker.log_artifact(ctx.parent_run, ctx.run.arch_path)
    st.tracker.log_artifact(ctx.parent_run, pic)
    return {"outputs": outputs, "metrics": metrics}
