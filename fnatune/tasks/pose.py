"""Human pose estimation, top-down (FNA++'s third task, FNA_SPEC §6.4): person crops from the ground-truth boxes of
a COCO keypoints layout, SimpleBaseline's head and heatmaps, COCO keypoint AP/AR (OKS) by pycocotools' own
evaluator, with flip test. The paper's pose recipe could not be read; ``pipelines/pose.yaml`` uses SimpleBaseline's.

Plain torch (no OpenMMLab): mmpose 1.3 does not install on this stack (see the issue note), and the head, the
codec and the metric are small. Its config section is ``pose``. Evaluation crops the *ground-truth* boxes (the
setting SimpleBaseline reports as "GT bbox"); a detector's boxes are not part of this task.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from fnatune.config.sections import Section, Size
from fnatune.tasks import Task, TaskBackend, register_task

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from fnatune.arch import Arch

METRICS = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")  # COCOeval's stats, in order


class PoseCfg(Section):
    """SimpleBaseline's settings (its COCO 256x192 recipe): crop size, heatmap sigma, head, augmentation.

    Pose crops are augmented here, as SimpleBaseline does (scale ~ N(1, scale_factor) clipped to 1 +- scale_factor;
    rotation ~ N(0, rotation) clipped to +-2*rotation with probability rotation_prob; horizontal flip with COCO's
    joint pairs); ``search.augment`` and ``finetune.augment`` are the image tasks' and do not apply.
    """

    input_size: Size = (256, 192)        # (h, w) of a person crop
    sigma: float = Field(2.0, gt=0)      # heatmap Gaussian, in heatmap pixels
    channels: int = Field(256, ge=8)     # deconvolution width
    num_deconv: int = Field(3, ge=1)
    bbox_padding: float = Field(1.25, ge=1)
    scale_factor: float = Field(0.3, ge=0, lt=1)
    rotation: float = Field(40.0, ge=0)
    rotation_prob: float = Field(0.6, ge=0, le=1)
    flip: float = Field(0.5, ge=0, le=1)
    flip_test: bool = True


class PoseBackend(TaskBackend):
    @property
    def pose(self) -> PoseCfg:
        section = self.cfg.section(self.task.section or "")
        assert isinstance(section, PoseCfg)
        return section

    def prepare(self) -> dict[str, float]:
        from fnatune.data.keypoints import check_coco_keypoints, generate_coco_keypoints
        from fnatune.errors import FnatuneError

        d, p = self.cfg.data, self.pose
        if d.num_classes != 17:
            raise FnatuneError(f"task pose predicts COCO's 17 joints, but data.num_classes is {d.num_classes}")
        out_stride = self.heatmap_stride() * 2 ** p.num_deconv
        if p.input_size[0] % out_stride or p.input_size[1] % out_stride:
            h, w = (-(-p.input_size[0] // out_stride) * out_stride, -(-p.input_size[1] // out_stride) * out_stride)
            raise FnatuneError(f"pose.input_size {list(p.input_size)} is not a multiple of the backbone's output "
                               f"stride {out_stride} (space {self.cfg.space}): the heatmaps would not match their "
                               f"targets; use e.g. [{h}, {w}]")
        self.generate(lambda root, g: generate_coco_keypoints(root, g.num_train, g.num_val, g.size, g.seed,
                                                              g.max_objects))
        metrics: dict[str, float] = {}
        for split in ("train", "val"):
            info = check_coco_keypoints(d.root, split, 17, check_files=d.check_labels)
            metrics[f"{split}_images"] = float(info["images"])
            metrics[f"{split}_persons"] = float(info["instances"])
        return metrics

    def _dataset(self, split: str, augment: bool, image_ids: Any = None) -> Dataset[Any]:
        from fnatune.data.coco import img_dir
        from fnatune.data.keypoints import person_instances, read_keypoint_annotations
        from fnatune.data.topdown import Augment, TopDownDataset

        p, d = self.pose, self.cfg.data
        instances = person_instances(read_keypoint_annotations(d.root, split), image_ids)
        aug = Augment(p.scale_factor, p.rotation, p.rotation_prob, p.flip) if augment else None
        return TopDownDataset(img_dir(d.root, split), instances, p.input_size, self.heatmap_stride(), p.sigma,
                              d.mean, d.std, aug, p.bbox_padding)

    def heatmap_stride(self) -> int:
        """Input pixels per heatmap pixel: the space's last tap's stride over the head's upsampling."""
        from fnatune.nets import ChildNet
        from fnatune.space import get_space

        info = ChildNet(get_space(self.cfg.space).first_arch()).feature_info[-1]
        return max(1, info.stride // 2 ** self.pose.num_deconv)

    def search_sets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        """FNA's halves of the train images (the annotation file's image list, ``random.Random(520)``), their
        persons with the train pipeline (arch steps, as FNA's code) and without augmentation (weight steps)."""
        from fnatune.data.coco import split_image_ids
        from fnatune.data.keypoints import read_keypoint_annotations

        s = self.cfg.search
        ids = [im["id"] for im in read_keypoint_annotations(self.cfg.data.root, "train")["images"]]
        part1, part2 = split_image_ids(ids, s.split.fraction, s.split.seed)
        aug, plain = self._dataset("train", True, part1), self._dataset("train", False, part2)
        if s.split.arch_data == "augmented":
            return aug, plain
        if s.split.arch_data == "both":
            return aug, self._dataset("train", True, part2)
        return self._dataset("train", False, part2), self._dataset("train", True, part1)

    def train_set(self) -> Dataset[Any]:
        return self._dataset("train", True)

    def val_set(self) -> Dataset[Any]:
        return self._dataset("val", False)

    def model(self, backbone: dict[str, Any], arch: Arch, phase: str) -> nn.Module:
        from fnatune.backbone import build_backbone
        from fnatune.heads.pose import PoseNet

        p = self.pose
        return PoseNet(build_backbone(backbone), 17, p.channels, p.num_deconv)

    def collate(self, batch: list[Any]) -> Any:
        from torch.utils.data import default_collate

        return default_collate(batch)

    def loss_fn(self, model: nn.Module) -> Any:
        from fnatune.heads.pose import weighted_mse

        def run(batch: Any) -> Any:
            dev = next(model.parameters()).device
            pred = model(batch["img"].to(dev))
            return weighted_mse(pred, batch["target"].to(dev), batch["weight"].to(dev))

        return run

    def evaluate(self, model: nn.Module, dataset: Dataset[Any]) -> dict[str, float]:
        """COCO keypoint AP/AR in percent over ``dataset``'s persons (GT boxes), with flip test if configured."""
        return evaluate_keypoints(model, dataset, self.cfg.data.root, "val", self.pose.flip_test,
                                  self.cfg.evaluate.max_images)

    def whole_model(self, arch: Arch) -> nn.Module:
        from fnatune.backbone import Backbone
        from fnatune.heads.pose import PoseNet

        p = self.pose
        return PoseNet(Backbone(arch), 17, p.channels, p.num_deconv)

    def cost_input(self) -> tuple[int, int]:
        size = self.cfg.search.cost.input or self.pose.input_size
        return int(size[0]), int(size[1])

    def taps_for(self, arch: Arch) -> tuple[str, ...]:
        """SimpleBaseline reads the last feature: the tail if the arch has one, else the last stage."""
        return ("tail",) if arch.skeleton.tail_channels is not None else (str(len(arch.skeleton.stages) - 1),)

    def export_size(self) -> tuple[int, int]:
        return tuple(self.pose.input_size)  # type: ignore[return-value]


def evaluate_keypoints(model: nn.Module, dataset: Any, root: str | Path, split: str, flip_test: bool = True,
                       max_images: int | None = None, batch_size: int = 16) -> dict[str, float]:
    """Predict every person of ``dataset`` (a :class:`~fnatune.data.topdown.TopDownDataset`), map the joints back
    to the image, and score them with pycocotools' COCOeval (``keypoints``), in percent. ``max_images`` keeps the
    persons of the first images (by id) and scores those images only."""
    import torch

    from fnatune.data.coco import ann_path
    from fnatune.data.keypoints import FLIP_PAIRS, KIND
    from fnatune.heads.pose import flip_back

    dev = next(model.parameters()).device
    model.eval()
    keep = sorted({inst.image_id for inst in dataset.instances})[:max_images] if max_images else None
    kept = set(keep) if keep is not None else None
    index = [i for i, inst in enumerate(dataset.instances) if kept is None or inst.image_id in kept]
    results: list[dict[str, Any]] = []
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            items = [dataset[i] for i in index[start:start + batch_size]]
            imgs = torch.stack([it["img"] for it in items]).to(dev)
            heat = model(imgs)
            if flip_test:
                heat = (heat + flip_back(model(imgs.flip(-1)), FLIP_PAIRS)) / 2
            results += keypoint_results(items, heat.float().cpu(), dataset.stride, dataset.input_size)
    return coco_keypoint_metrics(ann_path(root, split, KIND), results, keep)


def keypoint_results(items: list[dict[str, Any]], heatmaps: Any, stride: int, input_size: tuple[int, int],
                     visible_threshold: float = 0.2) -> list[dict[str, Any]]:
    """Heatmaps (N x K x h x w) of ``items`` (dataset items: ``center``, ``size``, ``image_id``) as COCO keypoint
    results in image pixels. A person's score is the mean peak of its joints above ``visible_threshold``
    (SimpleBaseline's rescoring, without a detector's box score: the boxes are ground truth)."""
    import numpy as np

    from fnatune.data.topdown import to_image
    from fnatune.heads.pose import decode

    coords, maxvals = decode(heatmaps)
    out = []
    for it, c, v in zip(items, coords.numpy(), maxvals.numpy()):
        pts = to_image(c * stride, np.asarray(it["center"]), np.asarray(it["size"]), input_size)
        confident = v[v > visible_threshold]
        kps = np.concatenate([pts, v[:, None]], axis=1).reshape(-1)
        out.append({"image_id": int(it["image_id"]), "category_id": 1, "keypoints": [float(x) for x in kps],
                    "score": float(confident.mean()) if len(confident) else 0.0})
    return out


def coco_keypoint_metrics(ann_file: str | Path, results: list[dict[str, Any]],
                          image_ids: list[int] | None = None) -> dict[str, float]:
    """pycocotools' COCOeval on keypoint results (COCO's results format), its ten stats in percent."""
    from fnatune.tv.metrics import cocoeval_stats

    if not results:
        return {k: 0.0 for k in METRICS}
    return dict(zip(METRICS, cocoeval_stats(ann_file, results, "keypoints", image_ids)))


def _defaults(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"space": "mbv2_pose", "data": {"root": "data/coco", "num_classes": 17}, "pose": {}}


POSE = register_task(Task(
    name="pose", metric="AP", backend=PoseBackend, defaults=_defaults,
    description="human pose, top-down: SimpleBaseline heatmaps on a COCO keypoints layout, COCO keypoint AP (OKS)",
    section="pose", section_model=PoseCfg, section_example="pose: {input_size: [256, 192]}",
    backends={"torchvision": ("pycocotools",)}, tiny_pipeline="pipelines/tiny/pose.yaml",
    smoke={"data.generate": {"num_train": 4, "num_val": 2, "size": [64, 96], "max_objects": 2},
           "pose.input_size": [64, 64], "pose.channels": 16, "search.batch_size": 2, "finetune.batch_size": 2,
           "evaluate.max_images": 1}))
