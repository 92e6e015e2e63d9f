"""The torchvision backend of the detection and segmentation tasks (``backend: torchvision``, the default): the
same detectors, segmenter, data pipelines and metrics as the OpenMMLab backend (:mod:`fnatune.mm`), built from
torch, torchvision's detection ops and ``transforms.v2``, and pycocotools, so nothing has to be compiled.

:mod:`fnatune.tv.det` and :mod:`fnatune.tv.seg` have the same functions as :mod:`fnatune.mm.det` and
:mod:`fnatune.mm.seg` (datasets, pipelines, model configs, ``build_model``, ``collate``, ``loss_fn``,
``evaluate``): a task backend picks one module by the run's ``backend`` and calls it the same way.
"""
from __future__ import annotations

from typing import Any


def loss_fn(model: Any) -> Any:
    """``batch -> scalar loss``: the model's own ``loss`` (normalising and padding on its device)."""
    return model.loss
