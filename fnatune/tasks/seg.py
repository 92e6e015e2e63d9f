"""Semantic segmentation (FNA_SPEC §3.4, §6.3): Cityscapes-layout data, DeepLabv3 with FNA's ASPP head, mIoU, on
torchvision (:mod:`fnatune.tv.seg`, the default) or mmseg (:mod:`fnatune.mm.seg`). The stages themselves are
task-independent (:mod:`fnatune.stages`)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnatune.tasks import Task, TaskBackend, register_task

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from fnatune.arch import Arch


class SegBackend(TaskBackend):
    libraries = {"torchvision": "fnatune.tv.seg", "mm": "fnatune.mm.seg"}

    def _base_size(self) -> tuple[int, int]:
        """Image size the scale factors apply to: the generated size, else Cityscapes' 1024x2048."""
        gen = self.cfg.data.generate
        return tuple(gen.size) if gen else (1024, 2048)  # type: ignore[return-value]

    def prepare(self) -> dict[str, float]:
        from fnatune.data.synthetic import check_cityscapes, generate_cityscapes

        d = self.cfg.data
        self.generate(lambda root, g: generate_cityscapes(root, g.num_train, g.num_val, g.size, g.seed))
        metrics = {}
        for split in ("train", "val"):
            if d.check_labels:
                metrics[f"{split}_images"] = float(check_cityscapes(d.root, split, d.num_classes, d.ignore_index))
            else:
                metrics[f"{split}_images"] = float(len(list((Path(d.root) / "leftImg8bit" / split).glob("*/*.png"))))
        self.lib  # noqa: B018  (fails here, early and clearly, when the backend's library is missing)
        return metrics

    def search_sets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        from torch.utils.data import Subset

        from fnatune.data import split_indices

        lib, d, s = self.lib, self.cfg.data, self.cfg.search
        a = s.augment
        aug = lib.cityscapes(d.root, "train", lib.train_pipeline(a.crop, a.scales, a.flip, self._base_size()))
        plain = lib.cityscapes(d.root, "train", lib.train_pipeline(a.crop, [1.0], 0.0, self._base_size()))
        part1, part2 = split_indices(len(aug), s.split.fraction, s.split.seed)
        if s.split.arch_data == "augmented":  # FNA's code: augmented half -> arch steps, plain half -> weights
            return Subset(aug, part1), Subset(plain, part2)
        if s.split.arch_data == "both":  # the ICLR seg recipe: one pipeline, `fraction` of the images -> arch
            return Subset(aug, part1), Subset(aug, part2)
        return Subset(plain, part2), Subset(aug, part1)

    def train_set(self) -> Dataset[Any]:
        lib, d, a = self.lib, self.cfg.data, self.cfg.finetune.augment
        return lib.cityscapes(d.root, "train", lib.train_pipeline(a.crop, a.scales, a.flip, self._base_size()))

    def val_set(self) -> Dataset[Any]:
        lib = self.lib
        return lib.cityscapes(self.cfg.data.root, "val", lib.plain_pipeline())

    def model(self, backbone: dict[str, Any], arch: Arch, phase: str) -> nn.Module:
        d, e = self.cfg.data, self.cfg.evaluate
        crop = (self.cfg.search if phase == "search" else self.cfg.finetune).augment.crop
        cfg = self.lib.model_config(backbone, arch.tap_channels(arch.skeleton.taps[-1]), d.num_classes, d.mean,
                                    d.std, crop, d.ignore_index, test_mode=e.mode, test_crop=e.crop,
                                    test_stride=e.stride)
        return self.lib.build_model(cfg)

    def collate(self, batch: list[Any]) -> Any:
        return self.lib.collate(batch)

    def loss_fn(self, model: nn.Module) -> Any:
        return self.lib.loss_fn(model)

    def evaluate(self, model: nn.Module, dataset: Dataset[Any]) -> dict[str, float]:
        return self.lib.evaluate(model, dataset, self.cfg.evaluate.max_images)

    def whole_model(self, arch: Arch) -> nn.Module:
        """The plain-torch network (:class:`~fnatune.heads.seg.SegNet`: the torchvision backend's model, and the mmseg
        model's parameters), so costs need no OpenMMLab on either backend."""
        from fnatune.heads.seg import SegNet
        from fnatune.nets import ChildNet

        return SegNet(ChildNet(arch), num_classes=self.cfg.data.num_classes)

    def taps_for(self, arch: Arch) -> tuple[str, ...]:
        """DeepLabv3 reads the last stage's output (not a 1x1 tail: FNA's head sits on the 320 channels)."""
        return (str(len(arch.skeleton.stages) - 1),)

    def export_size(self) -> tuple[int, int]:
        return tuple(self.cfg.finetune.augment.crop)  # type: ignore[return-value]


def _defaults(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"space": "mbv2_seg", "data": {"root": "data/cityscapes", "num_classes": 19}}


SEG = register_task(Task(
    name="seg", metric="mIoU", backend=SegBackend, defaults=_defaults,
    description="semantic segmentation: DeepLabv3 with FNA's separable ASPP on a Cityscapes layout, mIoU "
                "(torchvision or mmseg)",
    backends={"torchvision": ("torchvision.transforms.v2",), "mm": ("mmcv._ext", "mmseg.models")},
    tiny_pipeline="pipelines/tiny/seg.yaml",
    smoke={"data.generate": {"num_train": 4, "num_val": 1, "size": [64, 128]}, "search.augment.crop": [64, 64],
           "search.batch_size": 2, "finetune.augment.crop": [64, 64], "finetune.batch_size": 2,
           "evaluate.max_images": 1}))
