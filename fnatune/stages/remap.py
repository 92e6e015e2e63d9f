"""Stages ``supernet`` and ``target``: parameter remapping (FNA_SPEC §4), twice and always from the seed:
into every candidate of the super net before the search, and into the derived arch before the fine-tune.
The paper's ablations replace either with a seeded random init, and the target with super-net weights or
with the derived arch pretrained on its own (``finetune.init: pretrained``)."""
from __future__ import annotations

from typing import Any

import torch

from fnatune.arch import Arch
from fnatune.framework import RunContext, StageHandle
from fnatune.io import atomic_torch_save
from fnatune.space import SearchSpace, get_space
from fnatune.stages.seed import seed_of


def remap_or_init(ctx: RunContext, st: StageHandle, target: SearchSpace | Arch, init: str
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Seed -> ``target`` (a SearchSpace or an Arch) by remapping, or a seeded random init."""
    from fnatune.nets import ChildNet, SuperNet
    from fnatune.remap import RemapOptions, remap

    torch.manual_seed(ctx.cfg.seed)  # module init (and FNA's 1e-3 * N(0,1) alpha init) is part of the run's seed
    if init == "random":
        net = SuperNet(target) if isinstance(target, SearchSpace) else ChildNet(target)
        if ctx.cfg.remap.random_init == "normal":
            normal_init_(net)
        return net, {"init": "random"}
    opts = RemapOptions(**ctx.cfg.remap.model_dump(), seed=ctx.cfg.seed)
    net, report = remap(seed_of(ctx), target, opts)
    report.save(st.dir / "remap_report.json")
    st.log_artifact(st.dir / "remap_report.json")
    return net, {"init": "remap", **{f"remap_{k}": v for k, v in report.counts().items()}}


@torch.no_grad()
def normal_init_(net: torch.nn.Module) -> torch.nn.Module:
    """The paper's "without remapping" (FNA_SPEC §13.3): every conv and linear weight from N(0, 1), from the
    global RNG (seeded by the caller); BN, biases and a super net's alpha keep their init."""
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.weight.normal_(0.0, 1.0)
    return net


def _result(ctx: RunContext, st: StageHandle, net: torch.nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    out = atomic_torch_save(net.state_dict(), st.dir / "weights.pt")
    return {"outputs": {"weights": ctx.rel(out)},
            "metrics": {k: float(v) for k, v in info.items() if k.startswith(("remap_", "pretrain_"))}}


def stage_supernet(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    net, info = remap_or_init(ctx, st, get_space(ctx.cfg.space), ctx.cfg.search.init)
    st.log_params({k: v for k, v in info.items() if not k.startswith(("remap_", "pretrain_"))})
    return _result(ctx, st, net, info)


def stage_target(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    """Seed -> the derived arch, again from the seed (FNA_SPEC §1.6), or the ablations' alternatives."""
    arch = Arch.load(ctx.run.arch_path)
    init = ctx.cfg.finetune.init
    if init == "supernet":
        from fnatune.nets import SuperNet

        sup = SuperNet(get_space(ctx.cfg.space))
        sup.load_state_dict(torch.load(ctx.path("search", "supernet"), map_location="cpu", weights_only=True))
        net, info = sup.inherit_child(arch), {"init": "supernet"}
    elif init == "pretrained":
        from fnatune.nets import ChildNet
        from fnatune.stages.seed import pretrained_arch

        state, acc = pretrained_arch(ctx, st, arch)
        net = ChildNet(arch)
        net.load_state_dict(state)
        info = {"init": "pretrained", "pretrain_val_acc": acc}
    else:
        net, info = remap_or_init(ctx, st, arch, init)
    st.log_params({"init": info["init"], "arch": arch.block_string()})
    return _result(ctx, st, net, info)
