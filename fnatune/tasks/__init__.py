"""Tasks: what sits on top of a searched backbone (head, loss, metric).

Only the classification head lives here so far; ``build_task_model`` is what ``fnatune cost --task``
uses to count a whole network (backbone + head) the way the paper reports it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fnatune.arch import Arch
from fnatune.registry import Registry

_TASK_MODELS: Registry[nn.Module] = Registry("task")


def register_task_model(name: str, doc: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``factory(arch, **options) -> nn.Module`` building the whole network of a task."""
    return _TASK_MODELS.register(name, doc)


def list_tasks() -> list[str]:
    _load_builtin()
    return _TASK_MODELS.names()


def build_task_model(task: str, arch: Arch, **options: Any) -> nn.Module:
    _load_builtin()
    return _TASK_MODELS.factory(task)(arch, **options)


def _load_builtin() -> None:
    from fnatune.tasks import cls, seg  # noqa: F401


@register_task_model("backbone", "the backbone alone (stem, stages, tail), as the arch's taps see it")
def _backbone(arch: Arch, **_: Any) -> nn.Module:
    from fnatune.nets import ChildNet

    return ChildNet(arch)
