"""Stage ``evaluate`` (FNA_SPEC §6): the fine-tuned model on the task's val split, the task's metric in percent."""
from __future__ import annotations

import json
from typing import Any

import torch

from fnatune.framework import RunContext, StageHandle
from fnatune.io import atomic_write_json
from fnatune.stages.finetune import target_model


def stage_evaluate(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    b = ctx.backend
    model, _ = target_model(ctx, None)
    model.load_state_dict(torch.load(ctx.path("finetune", "model"), map_location="cpu", weights_only=True))
    model.to(ctx.device())
    metrics = b.evaluate(model, b.val_set())
    atomic_write_json(st.dir / "metrics.json", metrics)
    st.log_artifact(st.dir / "metrics.json")
    # the runs table shows these as they come: 49.87, not float32's 49.869998931884766
    st.tracker.log_metrics(ctx.parent_run, {k: round(float(v), 4) for k, v in metrics.items()})
    ctx.progress(f"  evaluate: {json.dumps({k: round(v, 2) for k, v in metrics.items()})}", force=True)
    return {"outputs": {"metrics": ctx.rel(st.dir / "metrics.json")}, "metrics": metrics}
