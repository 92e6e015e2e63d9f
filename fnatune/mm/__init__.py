"""OpenMMLab integrations (mmseg, mmdet), imported lazily: the search core never needs them.

``require("mmseg")`` imports a package or raises a :class:`~fnatune.errors.FnatuneError` that says
how to install the ``mm`` extra (a full mmcv compiled from source; mmcv-lite lacks ``mmcv._ext``).
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from fnatune.errors import FnatuneError

INSTALL_HINT = (
    "The seg/det pipelines need OpenMMLab with a full mmcv 2.1 (compiled; mmcv-lite lacks mmcv._ext).\n"
    "Install it into this environment with:\n"
    "  make install\n"
    "or by hand (torch first, then):\n"
    "  pip install setuptools==80.9.0 ninja\n"
    "  MAX_JOBS=2 pip install --no-build-isolation mmcv==2.1.0   # compiles, 10-15 min on 2 cores\n"
    "  pip install -e '.[mm]'"
)


def require(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or mmcv's own errors when _ext is missing
        raise FnatuneError(f"cannot import {name} ({type(e).__name__}: {e}).\n{INSTALL_HINT}") from e


def missing() -> list[str]:
    """What the mm backend needs and this environment lacks, found without importing anything (the driver of
    `fnatune run` validates configs without torch): the distributions mmcv, mmdet, mmsegmentation and mmengine,
    and mmcv's compiled ops (``mmcv/_ext*``: mmcv-lite and a failed compile lack them)."""
    from importlib import metadata

    out = []
    for dist in ("mmcv", "mmengine", "mmdet", "mmsegmentation"):
        try:
            files = metadata.files(dist) or []
        except metadata.PackageNotFoundError:
            out.append(dist)
            continue
        if dist == "mmcv" and not any(str(f).startswith("mmcv/_ext") for f in files):
            out.append("mmcv._ext (mmcv's compiled ops)")
    return out


def available(name: str = "mmseg") -> bool:
    try:
        require(name)
        require("mmcv._ext")
        return True
    except FnatuneError:
        return False


def collate(batch: list[Any]) -> Any:
    """OpenMMLab's batch format: a dict of lists (``inputs``, ``data_samples``), left to the model's
    data preprocessor to stack and pad."""
    from mmengine.dataset import pseudo_collate

    return pseudo_collate(batch)


def loss_fn(model: Any) -> Any:
    """``batch -> scalar loss`` for an OpenMMLab model: its data preprocessor, ``mode='loss'``, and its
    ``parse_losses`` (the sum of every loss term)."""
    def run(batch: Any) -> Any:
        data = model.data_preprocessor(batch, training=True)
        losses = model(**data, mode="loss")
        loss, _ = model.parse_losses(losses)
        return loss
    return run


@contextlib.contextmanager
def quiet_logger() -> Iterator[None]:
    """mmengine's current logger at WARNING for the block (it logs every parameter's init, and
    pycocotools' summary, at INFO)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel("WARNING")
    try:
        yield
    finally:
        logger.setLevel(level)


def feed_metric(model: Any, dataset: Any, metric: Any, n: int) -> None:
    """Run ``model.test_step`` (eval mode, no grad, batch 1) over the first ``n`` samples into ``metric``."""
    import torch

    model.eval()
    with torch.no_grad():
        for i in range(n):
            batch = collate([dataset[i]])
            outputs = model.test_step(batch)
            metric.process(batch, [o.to_dict() for o in outputs])
