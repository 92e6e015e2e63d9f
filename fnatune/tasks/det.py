"""Object detection (FNA_SPEC §3.2, §3.3, §5.5, §6.1, §6.2): COCO-format data, RetinaNet or SSDLite around
our backbone, COCO bbox mAP, on torchvision (:mod:`fnatune.tv.det`, the default) or mmdet (:mod:`fnatune.mm.det`).
Its config section is ``detector``. The stages are task-independent (:mod:`fnatune.stages`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from fnatune.config.sections import Section
from fnatune.errors import FnatuneError
from fnatune.tasks import Task, TaskBackend, register_task

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from fnatune.arch import Arch

# post-processing of each detector's recipe (FNA_SPEC §6.1, §6.2), where the config leaves it open
RECIPES = {"retinanet": {"score_thr": 0.05, "nms_iou": 0.5, "max_per_img": 100},
           "ssdlite": {"score_thr": 0.02, "nms_iou": 0.6, "max_per_img": 200}}
DEFAULT_SPACES = {"retinanet": "mbv2_det", "ssdlite": "mbv2_ssdlite"}


class DetectorCfg(Section):
    """Detection head and post-processing; None = the detector's recipe (FNA_SPEC §6.1, §6.2)."""

    type: Literal["retinanet", "ssdlite"] = "retinanet"
    score_thr: float | None = Field(None, ge=0, le=1)    # retinanet 0.05, ssdlite 0.02
    nms_iou: float | None = Field(None, gt=0, le=1)      # 0.5 / 0.6
    max_per_img: int | None = Field(None, ge=1)          # 100 / 200
    nms_pre: int = Field(1000, ge=1)
    channels: int = Field(256, ge=8)                     # retinanet FPN and head width (the paper: 256)


class DetBackend(TaskBackend):
    libraries = {"torchvision": "fnatune.tv.det", "mm": "fnatune.mm.det"}

    @property
    def madds_kwargs(self) -> dict[str, Any]:  # type: ignore[override]
        """mmdet detectors count their raw head outputs with ``mode="tensor"``; ours return them from forward."""
        return {"mode": "tensor"} if self.cfg.backend == "mm" else {}

    @property
    def detector(self) -> DetectorCfg:
        det = self.cfg.section(self.task.section or "")
        assert isinstance(det, DetectorCfg)  # the schema requires it for task det
        return det

    def prepare(self) -> dict[str, float]:

        from fnatune.data.coco import check_coco, generate_coco

        d = self.cfg.data
        self.generate(lambda root, g: generate_coco(root, g.num_train, g.num_val, g.size, g.seed, g.max_objects))
        metrics: dict[str, float] = {}
        for split in ("train", "val"):
            info = check_coco(d.root, split, d.num_classes, check_files=d.check_labels)
            metrics[f"{split}_images"] = float(info["images"])
            metrics[f"{split}_boxes"] = float(info["annotations"])
        self.lib  # noqa: B018  (fails here, early and clearly, when the backend's library is missing)
        return metrics

    def _train_pipeline(self, a: Any) -> list[dict[str, Any]]:
        return self.lib.train_pipeline(a.scale, a.keep_ratio, a.flip, a.ssd_augment, self.cfg.data.mean)

    def search_sets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        """FNA's halves of the train set: part 1 with the train pipeline, part 2 with the val pipeline
        (boxes kept); ``split.arch_data`` says which half feeds the arch steps (FNA's code: part 1)."""
        from torch.utils.data import Subset

        lib, d, s = self.lib, self.cfg.data, self.cfg.search
        a = s.augment
        aug = lib.coco(d.root, "train", self._train_pipeline(a))
        plain = lib.coco(d.root, "train", lib.plain_pipeline(a.scale, a.keep_ratio, with_labels_resized=True))
        idx1, idx2 = lib.search_subsets(aug, plain, d.root, "train", s.split.fraction, s.split.seed)
        if s.split.arch_data == "augmented":
            return Subset(aug, idx1), Subset(plain, idx2)
        if s.split.arch_data == "both":
            return Subset(aug, idx1), Subset(aug, idx2)
        return Subset(plain, idx2), Subset(aug, idx1)

    def train_set(self) -> Dataset[Any]:
        return self.lib.coco(self.cfg.data.root, "train", self._train_pipeline(self.cfg.finetune.augment))

    def val_set(self) -> Dataset[Any]:
        a = self.cfg.finetune.augment
        return self.lib.coco(self.cfg.data.root, "val", self.lib.plain_pipeline(a.scale, a.keep_ratio, False), test_mode=True)

    def _config(self, backbone: dict[str, Any], arch: Arch) -> dict[str, Any]:
        det, d = self.detector, self.cfg.data
        post = {k: v if (v := getattr(det, k)) is not None else RECIPES[det.type][k] for k in RECIPES[det.type]}
        chans = [arch.tap_channels(t) for t in arch.skeleton.taps]
        if det.type == "retinanet":
            if len(chans) != 4:
                raise FnatuneError(f"detector.type retinanet needs a space with 4 taps (C2..C5); space "
                                   f"'{self.cfg.space}' has {len(chans)} (use space: mbv2_det)")
            return self.lib.retinanet_config(backbone, chans, d.num_classes, d.mean, d.std, nms_pre=det.nms_pre,
                                             channels=det.channels, **post)
        if len(chans) != 2:
            raise FnatuneError(f"detector.type ssdlite needs a space with 2 taps (the 576 expansion and the 1280 "
                               f"tail); space '{self.cfg.space}' has {len(chans)} (use space: mbv2_ssdlite)")
        return self.lib.ssdlite_config(backbone, chans, d.num_classes, d.mean, d.std, nms_pre=det.nms_pre, **post)

    def model(self, backbone: dict[str, Any], arch: Arch, phase: str) -> nn.Module:
        return self.lib.build_model(self._config(backbone, arch))

    def taps_for(self, arch: Arch) -> tuple[str, ...]:
        """RetinaNet: C2..C5, the last stage at each of the strides 4, 8, 16, 32. SSDLite: the inner activation of
        the first layer of the stage that reaches stride 32 (FNA's 576-channel tap in MobileNetV2), and the tail."""
        from fnatune.blocks import inner_width

        if self.detector.type == "retinanet":
            return arch.taps_at_strides((4, 8, 16, 32))
        sk = arch.skeleton
        stage = next((s for s in range(len(sk.stages)) if sk.stride_before(s + 1) == 32 and sk.stride_before(s) == 16),
                     None)
        if stage is None or sk.tail_channels is None or inner_width(arch.ops[stage][0], sk.layer_io(stage, 0)[0]) is None:
            raise FnatuneError("detector.type ssdlite needs an arch with a 1x1 tail and an inner activation in the first "
                               "layer of its stride-32 stage (MobileNetV2-like); this arch has neither")
        return (f"{stage}.0.expand", "tail")

    def collate(self, batch: list[Any]) -> Any:
        return self.lib.collate(batch)

    def loss_fn(self, model: nn.Module) -> Any:
        return self.lib.loss_fn(model)

    def evaluate(self, model: nn.Module, dataset: Dataset[Any]) -> dict[str, float]:
        return self.lib.evaluate(model, dataset, self.cfg.data.root, "val", self.cfg.evaluate.max_images)

    def whole_model(self, arch: Arch) -> nn.Module:
        """The whole detector (mmdet's uninitialised: counting needs no init); its MAdds are counted with a forward
        on the meta device at the paper's resolution (RetinaNet 800x1088, SSDLite 320x320)."""
        return self.lib.build_model(self._config(dict(type="FNABackbone", arch=arch.to_dict()), arch), init=False)

    def export_size(self) -> tuple[int, int]:
        return tuple(self.cfg.finetune.augment.scale)  # type: ignore[return-value]


def _defaults(raw: Mapping[str, Any]) -> dict[str, Any]:
    det = raw.get("detector") if isinstance(raw.get("detector"), Mapping) else {}
    kind = det.get("type", "retinanet") if isinstance(det, Mapping) else "retinanet"
    return {"space": DEFAULT_SPACES.get(kind, "mbv2_det"), "data": {"root": "data/coco", "num_classes": 80}}


DET = register_task(Task(
    name="det", metric="bbox_mAP", backend=DetBackend, defaults=_defaults,
    description="object detection: RetinaNet or SSDLite (torchvision or mmdet) on a COCO layout, COCO bbox mAP",
    section="detector", section_model=DetectorCfg, section_required=True,
    backends={"torchvision": ("torchvision.ops", "pycocotools"), "mm": ("mmcv._ext", "mmdet.models")},
    section_example="detector: {type: retinanet}", tiny_pipeline="pipelines/tiny/det.yaml",
    smoke={"data.generate": {"num_train": 4, "num_val": 1, "size": [64, 96], "max_objects": 2},
           "search.augment.scale": [64, 96], "search.batch_size": 2, "finetune.augment.scale": [64, 96],
           "finetune.batch_size": 2, "detector.channels": 32, "evaluate.max_images": 1}))
