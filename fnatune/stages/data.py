"""Stage ``data``: generate the synthetic set if the config asks for one, then check the layout and the
labels the way the task reads them (:meth:`fnatune.tasks.TaskBackend.prepare`)."""
from __future__ import annotations

from typing import Any

from fnatune.framework import RunContext, StageHandle


def stage_data(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    return {"outputs": {}, "metrics": ctx.backend.prepare()}
