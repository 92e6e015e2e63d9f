"""The whole networks ``fnatune cost --task`` counts: the backbone alone, the seed's classifier, or the model of
any registered task (built by its backend from the task's default config)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import nn

from fnatune.arch import Arch
from fnatune.errors import UnknownNameError
from fnatune.tasks import COUNTING_TARGETS, get_task, list_tasks


def whole_network(task: str, arch: Arch, num_classes: int | None = None,
                  section: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The whole network of ``task`` around ``arch`` and the forward keyword arguments to count it with:
    ``backbone`` (the arch alone), ``cls`` (the seed's classifier, 1000 classes by default) or any registered
    task, built by its backend from the task's defaults (``section``: its config section, e.g. a detector), on
    the taps that task reads (:meth:`~fnatune.tasks.TaskBackend.taps_for`)."""
    if task == "backbone":
        from fnatune.nets import ChildNet

        return ChildNet(arch), {}
    if task == "cls":
        from fnatune.heads.cls import ClassifierNet

        return ClassifierNet(arch, num_classes=num_classes or 1000), {}
    if task not in list_tasks():
        known = ", ".join(sorted({*COUNTING_TARGETS, *list_tasks()}))
        raise UnknownNameError(f"unknown task '{task}'; known: {known}")
    from fnatune.config import validate

    t = get_task(task)
    raw: dict[str, Any] = {"name": "cost", "task": task}
    if arch.space:
        raw["space"] = arch.space
    if num_classes:
        raw["data"] = {"num_classes": num_classes}
    if t.section:
        raw[t.section] = dict(section or {})
    backend = t.backend_for(validate(raw, f"--task {task}"))
    taps = backend.taps_for(arch)
    sk = arch.skeleton
    # a tail no tap reads is not part of the task's network (MobileNetV2's 1280 conv under a RetinaNet)
    skeleton = replace(sk, taps=tuple(taps), tail_channels=sk.tail_channels if "tail" in taps else None)
    return backend.whole_model(replace(arch, skeleton=skeleton)), dict(backend.madds_kwargs)
