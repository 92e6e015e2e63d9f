"""Stage ``finetune`` (FNA_SPEC §6, parameter adaptation): the task's whole model around the target
backbone (remapped from the seed by stage ``target``), trained with the task's data, loss and recipe."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fnatune.arch import Arch
from fnatune.data import stream_for
from fnatune.framework import RunContext, StageHandle, eta
from fnatune.io import atomic_torch_save
from fnatune.stages.data import FINETUNE_SET


def target_model(ctx: RunContext, weights: Path | None) -> tuple[nn.Module, Arch]:
    """The task's model around the run's arch, its backbone loaded from ``weights`` if given."""
    arch = Arch.load(ctx.run.arch_path)
    bb = dict(type="FNABackbone", arch=arch.to_dict(), weights=str(weights) if weights else None)
    return ctx.backend.model(bb, arch, "finetune"), arch


def stage_finetune(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    return ctx.parallel(st, finetune_core)


def finetune_core(ctx: RunContext, st: StageHandle, dp: Any = None) -> dict[str, Any]:
    """The fine-tune itself, on one process or on every rank of a data-parallel group (rank 0 writes)."""
    from fnatune.train import Trainer, TrainObserver

    f, b = ctx.cfg.finetune, ctx.backend
    dev = ctx.device()
    torch.manual_seed(ctx.cfg.seed)  # the head's init: same config, same run, in any process
    model, _arch = target_model(ctx, ctx.path("target", "weights"))
    model.to(dev)
    ds, val = b.train_set(), b.val_set()

    class Obs(TrainObserver):
        def on_step(self, i: dict[str, Any]) -> None:
            ctx.progress(f"  finetune it {i['it']}/{i['iters']} loss {i['loss']:.3f} lr {i['lr']:.2e} "
                         f"ETA {eta(i['it'], i['iters'], i['elapsed'])}")

        def on_log(self, it: int, metrics: dict[str, float]) -> None:
            st.log_metrics(metrics, it)
            ctx.reporter.metrics("finetune", {"it": it, **metrics})

        def on_checkpoint(self, path: Path, progress: dict[str, Any]) -> None:
            ctx.reporter.checkpoint("finetune", path, progress)

        def on_recalibrated(self, info: dict[str, Any]) -> None:
            ctx.progress(f"  finetune: BN statistics of {info['bn_layers']} layers recomputed over {info['iters']} "
                         f"batches in {info['seconds']:.1f} s", force=True)
            st.log_metrics({"bn_recalibration_s": info["seconds"]}, 0)

    stream = stream_for(ds, f.batch_size, b.collate, ctx.cfg.seed * 2 + 3, ctx.cfg.data.num_workers, dp,
                        "finetune.batch_size", FINETUNE_SET)
    evaluate = (lambda: b.evaluate(model, val)) if f.eval_every else None
    trainer = Trainer(model, b.loss_fn(model), stream, f, st.dir / "work", Obs(), evaluate, seed=ctx.cfg.seed, dp=dp)
    trainer.run()
    if dp is not None and not dp.is_main:
        return {}
    model_path = atomic_torch_save(model.state_dict(), st.dir / "model.pt")
    bb_path = atomic_torch_save(model.backbone.net.state_dict(), st.dir / "backbone.pt")
    trainer.ckpt.remove()
    st.log_artifact(model_path)
    return {"outputs": {"model": ctx.rel(model_path), "backbone": ctx.rel(bb_path)}, "metrics": {}}
