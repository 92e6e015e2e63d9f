"""Detection with mmdet (FNA_SPEC §3.2, §3.3, §5.5, §6.1, §6.2): COCO-format data, RetinaNet or
SSDLite around our backbone, COCO bbox mAP. The stages are task-independent
(:mod:`fnatune.stages.learn`)."""
from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from fnatune.arch import Arch
from fnatune.errors import FnatuneError
from fnatune.stages.backend import TaskBackend

# post-processing of each detector's recipe (FNA_SPEC §6.1, §6.2), where the config leaves it open
RECIPES = {"retinanet": {"score_thr": 0.05, "nms_iou": 0.5, "max_per_img": 100},
           "ssdlite": {"score_thr": 0.02, "nms_iou": 0.6, "max_per_img": 200}}


def _mm() -> Any:
    from fnatune.mm import det

    return det


class DetBackend(TaskBackend):
    headline = "bbox_mAP"

    def prepare(self) -> dict[str, float]:
        from fnatune.data.coco import check_coco, generate_coco

        d = self.cfg.data
        if d.generate is not None:
            g = d.generate
            from pathlib import Path

            from fnatune.io import file_lock

            with file_lock(str(Path(d.root).resolve()) + ".lock"):  # trials of a sweep share the folder
                generate_coco(d.root, g.num_train, g.num_val, g.size, g.seed, g.max_objects)
        metrics: dict[str, float] = {}
        for split in ("train", "val"):
            info = check_coco(d.root, split, d.num_classes, check_files=d.check_labels)
            metrics[f"{split}_images"] = float(info["images"])
            metrics[f"{split}_boxes"] = float(info["annotations"])
        _mm()  # fail here, early and clearly, when OpenMMLab is missing
        return metrics

    def _train_pipeline(self, a: Any) -> list[dict[str, Any]]:
        return _mm().train_pipeline(a.scale, a.keep_ratio, a.flip, a.ssd_augment, self.cfg.data.mean)

    def search_sets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        """FNA's halves of the train set: part 1 with the train pipeline, part 2 with the val pipeline
        (boxes kept); ``split.arch_data`` says which half feeds the arch steps (FNA's code: part 1)."""
        mm, d, s = _mm(), self.cfg.data, self.cfg.search
        a = s.augment
        aug = mm.coco(d.root, "train", self._train_pipeline(a))
        plain = mm.coco(d.root, "train", mm.plain_pipeline(a.scale, a.keep_ratio, with_labels_resized=True))
        idx1, idx2 = mm.search_subsets(aug, plain, d.root, "train", s.split.fraction, s.split.seed)
        if s.split.arch_data == "augmented":
            return Subset(aug, idx1), Subset(plain, idx2)
        return Subset(plain, idx2), Subset(aug, idx1)

    def train_set(self) -> Dataset[Any]:
        return _mm().coco(self.cfg.data.root, "train", self._train_pipeline(self.cfg.finetune.augment))

    def val_set(self) -> Dataset[Any]:
        a = self.cfg.finetune.augment
        return _mm().coco(self.cfg.data.root, "val", _mm().plain_pipeline(a.scale, a.keep_ratio, False), test_mode=True)

    def _config(self, backbone: dict[str, Any], arch: Arch) -> dict[str, Any]:
        det, d = self.cfg.detector, self.cfg.data
        assert det is not None  # the schema requires it for task det
        post = {k: v if (v := getattr(det, k)) is not None else RECIPES[det.type][k] for k in RECIPES[det.type]}
        chans = [arch.tap_channels(t) for t in arch.skeleton.taps]
        if det.type == "retinanet":
            if len(chans) != 4:
                raise FnatuneError(f"detector.type retinanet needs a space with 4 taps (C2..C5); space "
                                   f"'{self.cfg.space}' has {len(chans)} (use space: mbv2_det)")
            return _mm().retinanet_config(backbone, chans, d.num_classes, d.mean, d.std, nms_pre=det.nms_pre,
                                          channels=det.channels, **post)
        if len(chans) != 2:
            raise FnatuneError(f"detector.type ssdlite needs a space with 2 taps (the 576 expansion and the 1280 "
                               f"tail); space '{self.cfg.space}' has {len(chans)} (use space: mbv2_ssdlite)")
        return _mm().ssdlite_config(backbone, chans, d.num_classes, d.mean, d.std, nms_pre=det.nms_pre, **post)

    def model(self, backbone: dict[str, Any], arch: Arch, phase: str) -> nn.Module:
        return _mm().build_model(self._config(backbone, arch))

    def collate(self, batch: list[Any]) -> Any:
        return _mm().collate(batch)

    def loss_fn(self, model: nn.Module) -> Any:
        return _mm().loss_fn(model)

    def evaluate(self, model: nn.Module, dataset: Dataset[Any]) -> dict[str, float]:
        return _mm().evaluate(model, dataset, self.cfg.data.root, "val", self.cfg.evaluate.max_images)

    def whole_cost(self, arch: Arch) -> dict[str, float]:
        """The mmdet detector's parameters, and its MAdds (convs and linears) at the paper's resolution
        (RetinaNet 800x1088, SSDLite 320x320) from a forward on the meta device."""
        from fnatune.cost import count_madds, count_params
        from fnatune.space import get_space

        model = _mm().build_model(self._config(dict(type="FNABackbone", arch=arch.to_dict()), arch), init=False)
        size = self.cfg.search.cost.input or get_space(self.cfg.space).input_size
        return {"params": float(count_params(model)),
                "madds_paper_resolution": float(count_madds(model, size, mode="tensor"))}

    def export_size(self) -> tuple[int, int]:
        return tuple(self.cfg.finetune.augment.scale)  # type: ignore[return-value]
