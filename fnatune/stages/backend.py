"""What a task (seg, det) supplies to the task-independent stages in :mod:`fnatune.stages.learn`.

The search, fine-tune and evaluation loops are the same for every task; a :class:`TaskBackend`
knows its data layout, its datasets and augmentations, how to put a backbone into its library model
(mmseg's EncoderDecoder, mmdet's RetinaNet/SSDLite), its metric, and how to count the whole network
the way the paper reports it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from fnatune.arch import Arch
from fnatune.pipeline import RunContext


class TaskBackend(ABC):
    """One task's data, model and metric, bound to a run's context."""

    #: the metric that sums a run up (logged on the parent run and in ablation tables)
    headline: str = ""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg

    @abstractmethod
    def prepare(self) -> dict[str, float]:
        """Generate synthetic data if asked, check the layout; fail early if the library is missing."""

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
    def loss_fn(self, model: nn.Module) -> Any:
        """``batch -> scalar loss``."""

    @abstractmethod
    def evaluate(self, model: nn.Module, dataset: Dataset[Any]) -> dict[str, float]:
        """Metrics in percent; includes :attr:`headline`."""

    @abstractmethod
    def whole_cost(self, arch: Arch) -> dict[str, float]:
        """``params`` and ``madds_paper_resolution`` of the whole network (backbone, neck, head)."""

    @abstractmethod
    def export_size(self) -> tuple[int, int]:
        """(H, W) to export the backbone at when ``export.input`` is not given."""

