"""Segmentation with mmseg (FNA_SPEC §3.4, §6.3): Cityscapes-layout data, DeepLabv3 with FNA's ASPP
head, mIoU. The stages themselves are task-independent (:mod:`fnatune.stages.learn`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from fnatune.arch import Arch
from fnatune.stages.backend import TaskBackend


def _mm() -> Any:
    from fnatune.mm import seg

    return seg


class SegBackend(TaskBackend):
    headline = "mIoU"

    def _base_size(self) -> tuple[int, int]:
        """Image size the scale factors apply to: the generated size, else Cityscapes' 1024x2048."""
        gen = self.cfg.data.generate
        return tuple(gen.size) if gen else (1024, 2048)  # type: ignore[return-value]

    def prepare(self) -> dict[str, float]:
        from fnatune.data.synthetic import check_cityscapes, generate_cityscapes

        d = self.cfg.data
        if d.generate is not None:
            g = d.generate
            from fnatune.io import file_lock

            with file_lock(str(Path(d.root).resolve()) + ".lock"):  # trials of a sweep share the folder
                generate_cityscapes(d.root, g.num_train, g.num_val, g.size, g.seed)
        metrics = {}
        for split in ("train", "val"):
            if d.check_labels:
                metrics[f"{split}_images"] = float(check_cityscapes(d.root, split, d.num_classes, d.ignore_index))
            else:
                metrics[f"{split}_images"] = float(len(list((Path(d.root) / "leftImg8bit" / split).glob("*/*.png"))))
        _mm()  # fail here, early and clearly, when OpenMMLab is missing
        return metrics

    def search_sets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        from fnatune.data import split_indices

        mm, d, s = _mm(), self.cfg.data, self.cfg.search
        a = s.augment
        aug = mm.cityscapes(d.root, "train", mm.train_pipeline(a.crop, a.scales, a.flip, self._base_size()))
        plain = mm.cityscapes(d.root, "train", mm.train_pipeline(a.crop, [1.0], 0.0, self._base_size()))
        part1, part2 = split_indices(len(aug), s.split.fraction, s.split.seed)
        if s.split.arch_data == "augmented":  # FNA's code: augmented half -> arch steps, plain half -> weights
            return Subset(aug, part1), Subset(plain, part2)
        return Subset(plain, part2), Subset(aug, part1)

    def train_set(self) -> Dataset[Any]:
        mm, d, a = _mm(), self.cfg.data, self.cfg.finetune.augment
        return mm.cityscapes(d.root, "train", mm.train_pipeline(a.crop, a.scales, a.flip, self._base_size()))

    def val_set(self) -> Dataset[Any]:
        mm = _mm()
        return mm.cityscapes(self.cfg.data.root, "val", mm.plain_pipeline())

    def model(self, backbone: dict[str, Any], arch: Arch, phase: str) -> nn.Module:
        d, e = self.cfg.data, self.cfg.evaluate
        crop = (self.cfg.search if phase == "search" else self.cfg.finetune).augment.crop
        cfg = _mm().model_config(backbone, arch.tap_channels(arch.skeleton.taps[-1]), d.num_classes, d.mean, d.std,
                                 crop, d.ignore_index, test_mode=e.mode, test_crop=e.crop, test_stride=e.stride)
        return _mm().build_model(cfg)

    def collate(self, batch: list[Any]) -> Any:
        return _mm().collate(batch)

    def loss_fn(self, model: nn.Module) -> Any:
        return _mm().loss_fn(model)

    def evaluate(self, model: nn.Module, dataset: Dataset[Any]) -> dict[str, float]:
        return _mm().evaluate(model, dataset, self.cfg.evaluate.max_images)

    def whole_cost(self, arch: Arch) -> dict[str, float]:
        """Counted on the plain-torch twin (:class:`~fnatune.tasks.seg.SegNet`, same parameters as the
        mmseg model), so costs need no OpenMMLab."""
        from fnatune.cost import count_madds, count_params
        from fnatune.tasks import build_task_model

        net = build_task_model("seg", arch, num_classes=self.cfg.data.num_classes)
        size = self.cfg.search.cost.input or (1024, 2048)
        return {"params": float(count_params(net)), "madds_paper_resolution": float(count_madds(net, size))}

    def export_size(self) -> tuple[int, int]:
        return tuple(self.cfg.finetune.augment.crop)  # type: ignore[return-value]
