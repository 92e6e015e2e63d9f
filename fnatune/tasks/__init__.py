"""Tasks: what an adaptation run adapts its backbone to (segmentation, detection, ...), behind one seam.

A task is one module of this package that registers a :class:`Task`: its name, its headline metric, the
defaults it fills into a pipeline config (its default space, its data root and class count), the config
section of its own (detection's ``detector``), the pipeline that runs it on generated data, and its
:class:`TaskBackend`. The backend is everything the task-independent stages need from the task: the data
checks and datasets, the library model around a backbone, the loss, the metric and the whole-network cost. A task
may run on several libraries (``backend: torchvision | mm``, :data:`BACKENDS`): its :class:`TaskBackend` then
names one module per library (``libraries``), each with the same functions, and calls the run's. The config
schema, the stages, the experiment and the summary read all of this from the registry and name no task.

Task modules stay importable without torch (the driver of ``fnatune run`` validates configs and never
imports torch); their backends import the heavy libraries inside their methods. Adding a task = its module
here (found automatically), its module per library (``fnatune/tv/``, ``fnatune/mm/``), its pipelines and its
tests; other packages add tasks under the ``fnatune.tasks`` entry-point group.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fnatune.registry import Registry, import_submodules, load_plugins

if TYPE_CHECKING:
    from pydantic import BaseModel
    from torch import nn
    from torch.utils.data import Dataset

    from fnatune.arch import Arch
    from fnatune.config.pipeline import PipelineBase


class TaskBackend(ABC):
    """One task's data, model and metric for one pipeline config. The search, fine-tune and evaluation loops
    are the same for every task; this is what differs."""

    #: per backend (``cfg.backend``), the module that implements the task's data, model and metric on it; every
    #: such module has the same functions (:mod:`fnatune.tv.det` and :mod:`fnatune.mm.det`, for example)
    libraries: Mapping[str, str] = {}

    def __init__(self, cfg: PipelineBase) -> None:
        self.cfg = cfg
        self.task = get_task(cfg.task)

    @property
    def lib(self) -> Any:
        """This run's backend module (importing the mm one raises the install hint where OpenMMLab is missing)."""
        import importlib

        return importlib.import_module(self.libraries[self.cfg.backend])

    @property
    def headline(self) -> str:
        """The metric that sums a run up (logged on the parent run, in sweep and ablation tables)."""
        return self.task.metric

    @abstractmethod
    def prepare(self) -> dict[str, float]:
        """Generate synthetic data if asked, check the layout; fail early if the library is missing."""

    def generate(self, write: Callable[[str, Any], Any]) -> None:
        """If the config asks for generated data, ``write(root, data.generate)`` under a lock on the folder:
        trials of a sweep share it, and the second one finds the first one's finished set."""
        from pathlib import Path

        from fnatune.io import file_lock

        d = self.cfg.data
        if d.generate is not None:
            with file_lock(str(Path(d.root).resolve()) + ".lock"):
                write(d.root, d.generate)

    @abstractmethod
    def search_sets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        """(arch-step set, weight-step set): the two halves of FNA's split with their pipelines."""

    @abstractmethod
    def train_set(self) -> Dataset[Any]:
        """The fine-tune set (train pipeline)."""

    @abstractmethod
    def val_set(self) -> Dataset[Any]:
        """The evaluation set (test pipeline)."""

    @abstractmethod
    def model(self, backbone: dict[str, Any], arch: Arch, phase: str) -> nn.Module:
        """The library model around ``backbone`` (an FNABackbone/FNASuperBackbone config). ``arch`` gives
        the taps' channels; ``phase`` is ``"search"`` or ``"finetune"``. Head init is seeded by the caller."""

    @abstractmethod
    def collate(self, batch: list[Any]) -> Any:
        """Samples -> a batch the model's data preprocessor takes."""

    @abstractmethod
    def loss_fn(self, model: nn.Module) -> Callable[[Any], Any]:
        """``batch -> scalar loss``."""

    @abstractmethod
    def evaluate(self, model: nn.Module, dataset: Dataset[Any]) -> dict[str, float]:
        """Metrics in percent; includes :attr:`headline`."""

    @abstractmethod
    def whole_model(self, arch: Arch) -> nn.Module:
        """The whole network (backbone, neck, head) as the paper counts it, for :meth:`whole_cost`."""

    @abstractmethod
    def export_size(self) -> tuple[int, int]:
        """(H, W) to export the backbone at when ``export.input`` is not given."""

    def taps_for(self, arch: Arch) -> tuple[str, ...]:
        """The taps this task's model reads from ``arch`` when the arch is not of the task's space (a seed's own
        layout, for ``fnatune cost``): the arch's own taps unless the task says otherwise."""
        return tuple(arch.skeleton.taps)

    #: keyword arguments of the whole model's forward when it is counted (mmdet models: ``mode="tensor"``)
    madds_kwargs: Mapping[str, Any] = {}

    def cost_input(self) -> tuple[int, int]:
        """The resolution the paper counts MAdds at: ``search.cost.input``, else the space's task resolution."""
        from fnatune.space import get_space

        size = self.cfg.search.cost.input or get_space(self.cfg.space).input_size
        return int(size[0]), int(size[1])

    def whole_cost(self, arch: Arch) -> dict[str, float]:
        """``params`` and ``madds_paper_resolution`` of the whole network, counted as the paper counts."""
        from fnatune.cost import count_madds, count_params

        model = self.whole_model(arch)
        return {"params": float(count_params(model)),
                "madds_paper_resolution": float(count_madds(model, self.cost_input(), **self.madds_kwargs))}


#: the backends a task may run on; ``torchvision`` needs nothing compiled, ``mm`` is the OpenMMLab extra
BACKENDS = ("torchvision", "mm")


@dataclass(frozen=True)
class Task:
    """A registered task; see the module docstring.

    ``defaults(raw)`` returns config values for a raw (unvalidated) pipeline mapping of this task; the
    file's own values win over them. ``section``/``section_model`` declare the task's own config section,
    ``section_required`` whether a pipeline must write it. ``backends`` maps each backend the task runs on
    (:data:`BACKENDS`) to the modules that backend imports (an optional library: :meth:`available` says whether
    they import here); the first is the default. ``smoke`` are ``--set`` overrides that shrink the
    ``tiny_pipeline`` to a few seconds, for the conformance tests.
    """

    name: str
    metric: str
    description: str
    backend: type[TaskBackend]
    defaults: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda raw: {}
    section: str | None = None
    section_model: type[BaseModel] | None = None
    section_required: bool = False
    section_example: str = ""
    backends: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"torchvision": ()})
    tiny_pipeline: str | None = None
    smoke: Mapping[str, Any] = field(default_factory=dict)

    def backend_for(self, cfg: PipelineBase) -> TaskBackend:
        return self.backend(cfg)

    @property
    def default_backend(self) -> str:
        return next(iter(self.backends))

    def requires(self, backend: str | None = None) -> tuple[str, ...]:
        """The modules ``backend`` (default: the task's default backend) imports."""
        return tuple(self.backends[backend or self.default_backend])

    def available(self, backend: str | None = None) -> bool:
        """Whether every module ``backend`` (default: the default one) needs imports in this environment."""
        import importlib

        for name in self.requires(backend):
            try:
                importlib.import_module(name)
            except Exception:  # ImportError, or a library's own error when its compiled part is missing
                return False
        return True


_TASKS: Registry[Task] = Registry("task", loader=lambda: (import_submodules("fnatune.tasks"),
                                                          load_plugins("fnatune.tasks", _TASKS)))
#: what `fnatune cost --task` counts besides the registered tasks (:mod:`fnatune.whole_network`)
COUNTING_TARGETS = ("backbone", "cls")


def register_task(task: Task) -> Task:
    """Register ``task`` under ``task.name`` (the config schema checks that its section shadows no key)."""
    if task.name in COUNTING_TARGETS:
        raise ValueError(f"'{task.name}' is reserved for `fnatune cost --task {task.name}`")
    _TASKS.register(task.name, doc=task.description)(lambda: task)
    return task


def list_tasks() -> list[str]:
    return _TASKS.names()


def get_task(name: str) -> Task:
    return _TASKS.create(name)


__all__ = ["BACKENDS", "COUNTING_TARGETS", "Task", "TaskBackend", "get_task", "list_tasks", "register_task"]
