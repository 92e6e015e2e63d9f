"""Stage ``data``: generate the synthetic set if the config asks for one, then check the layout and the
labels the way the task reads them (:meth:`fnatune.tasks.TaskBackend.prepare`), and that every stream the
run will draw from holds at least one batch (:func:`check_batches`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fnatune.framework import RunContext, StageHandle

if TYPE_CHECKING:
    from fnatune.config import PipelineCfg
    from fnatune.tasks import TaskBackend

#: what the errors call the two parts of FNA's split of the train set (arch steps, weight steps)
SEARCH_PARTS = ("the search's arch-step part of the train set", "the search's weight-step part of the train set")
FINETUNE_SET = "the fine-tune's train set"


def check_batches(cfg: PipelineCfg, backend: TaskBackend, counts: dict[str, float]) -> None:
    """Fail with the setting to change when a stream of the run could not fill one batch (a small real set: the
    4-image COCO keypoints sample, say). ``counts`` is what :meth:`~fnatune.tasks.TaskBackend.prepare`
    returned; the data sets are only built (which reads the annotations again) when ``train_images`` (pose:
    ``train_persons``) is small
    enough that a part of the search split could hold fewer images than a batch."""
    from fnatune.data.stream import require_batch

    s, f = cfg.search, cfg.finetune
    smallest_part = min(s.split.fraction, 1 - s.split.fraction) if s.enabled else 1.0
    biggest = max(s.batch_size if s.enabled else 0, f.batch_size)
    sizes = [counts[k] for k in ("train_images", "train_persons") if k in counts]  # pose: one sample per person
    n = min(sizes) if sizes else None
    if n is not None and n * smallest_part >= 2 * biggest:
        return
    if s.enabled:  # the smaller part names the batch size that fits both
        n_part, what = min(zip(map(len, backend.search_sets()), SEARCH_PARTS))
        require_batch(n_part, s.batch_size, "search.batch_size", what)
    require_batch(len(backend.train_set()), f.batch_size, "finetune.batch_size", FINETUNE_SET)


def stage_data(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    counts = ctx.backend.prepare()
    check_batches(ctx.cfg, ctx.backend, counts)
    return {"outputs": {}, "metrics": counts}
