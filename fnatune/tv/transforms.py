"""Box- and mask-aware data pipelines on ``torchvision.transforms.v2`` for the torchvision backend, step for step
the OpenMMLab pipelines the mm backend runs (FNA_SPEC §6.1-§6.3):

* RetinaNet: resize keeping the ratio into ``scale`` (mmcv's rule), horizontal flip;
* SSDLite: mmdet's photometric distortion, zoom-out 1-4x filled with the mean, min-IoU crop, resize to the square
  input, flip, in FNA's order;
* DeepLabv3: a random scale from a set (keeping the ratio), a crop of at most ``crop`` (the batch is padded to it
  later), flip.

v2 draws its randomness from torch's global generator, while our batch streams seed Python's and NumPy's per
sample (:mod:`fnatune.data.stream`). :class:`Seeded` bridges the two: it seeds a forked torch generator from
NumPy's, so a sample's augmentation is a pure function of (stream seed, pass, index) and a resumed run replays it,
without touching the training's own torch generator.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def keep_ratio_size(h: int, w: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's ``rescale_size``: the largest factor that fits the long edge into max(scale) and the short edge into
    min(scale); sizes rounded half up. Returns (new_h, new_w)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


class RescaleKeepRatio(v2.Transform):
    """Resize every image, box and mask so that the image fits ``scale`` (h, w) keeping its ratio (mmdet/mmseg
    ``Resize(keep_ratio=True)``); with several scales, one is drawn per sample (mmseg ``RandomChoiceResize``)."""

    def __init__(self, scales: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.scales = [tuple(int(v) for v in s) for s in scales]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        scale = self.scales[int(torch.randint(len(self.scales), ()))] if len(self.scales) > 1 else self.scales[0]
        return {"size": keep_ratio_size(h, w, scale)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=list(params["size"]), antialias=True)


class CropAtMost(v2.Transform):
    """mmseg's ``RandomCrop``: a random window of ``min(crop, image)`` per side (no padding here; the batch is
    padded to the crop size after normalisation, as mmseg's data preprocessor does)."""

    def __init__(self, crop: Sequence[int]) -> None:
        super().__init__()
        self.crop = (int(crop[0]), int(crop[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.crop[0], h), min(self.crop[1], w)
        top = int(torch.randint(h - ch + 1, ()))
        left = int(torch.randint(w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class PhotometricDistortion(v2.Transform):
    """mmdet 3.3's ``PhotoMetricDistortion`` (SSD), step for step, each step with probability 1/2: brightness by an
    additive delta in [-32, 32] (on 0-255); contrast by multiplying the pixels by [0.5, 1.5], either first or last;
    saturation: HSV's S times [0.5, 1.5], clipped at 1 (done in RGB: every channel moves towards or away from the
    pixel's max, which keeps hue and value); hue shifted by up to 18 degrees (OpenCV's float HSV is in degrees);
    then the channels permuted at random. The one difference: values are clipped to 0-255 between steps (the image
    stays uint8 for the next transforms; mmdet's float image may leave the range). torchvision's
    ``RandomPhotometricDistort`` differs in brightness (multiplicative), contrast and saturation (blends with the
    mean and the grey image) and has no clipped-S rule, hence this class."""

    def __init__(self, brightness_delta: float = 32, contrast: Sequence[float] = (0.5, 1.5),
                 saturation: Sequence[float] = (0.5, 1.5), hue_delta: float = 18.0) -> None:
        super().__init__()
        self.brightness_delta, self.contrast, self.saturation, self.hue_delta = (
            float(brightness_delta), tuple(contrast), tuple(saturation), float(hue_delta))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def maybe(lo: float, hi: float) -> float | None:
            return float(torch.empty(()).uniform_(lo, hi)) if bool(torch.rand(()) < 0.5) else None

        return {"brightness": maybe(-self.brightness_delta, self.brightness_delta),
                "contrast_first": bool(torch.rand(()) < 0.5),
                "contrast": maybe(*self.contrast), "saturation": maybe(*self.saturation),
                "hue": maybe(-self.hue_delta, self.hue_delta),
                "swap": torch.randperm(3).tolist() if bool(torch.rand(()) < 0.5) else None}

    @staticmethod
    def scale_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
        """HSV's S x ``factor``, clipped at 1, on a float RGB image: c -> V - (V - c)·k, k = min(factor, 1/S)."""
        v = img.amax(0, keepdim=True)
        s = (v - img.amin(0, keepdim=True)) / v.clamp(min=1e-6)
        k = torch.minimum(torch.full_like(s, factor), 1 / s.clamp(min=1e-6))
        return v - (v - img) * k

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        img = inpt.as_subclass(torch.Tensor).float()
        if params["brightness"] is not None:
            img = (img + params["brightness"]).clamp(0, 255)
        if params["contrast_first"] and params["contrast"] is not None:
            img = (img * params["contrast"]).clamp(0, 255)
        if params["saturation"] is not None:
            img = self.scale_saturation(img, params["saturation"]).clamp(0, 255)
        if params["hue"] is not None:
            img = F.adjust_hue(img / 255, params["hue"] / 360) * 255
        if not params["contrast_first"] and params["contrast"] is not None:
            img = (img * params["contrast"]).clamp(0, 255)
        if params["swap"] is not None:
            img = img[params["swap"]]
        return tv_tensors.wrap(img.round().clamp(0, 255).to(torch.uint8), like=inpt)


def det_train(scale: Sequence[int], keep_ratio: bool, flip: float, ssd_augment: bool, mean: Sequence[float]
              ) -> v2.Compose:
    """RetinaNet: resize (keep ratio) + flip (FNA_SPEC §6.1). SSDLite: photometric distortion, zoom-out 1-4x,
    min-IoU crop, resize to the square input, flip (§6.2). Boxes that leave the image are dropped."""
    steps: list[v2.Transform] = []
    if ssd_augment:
        fill = {tv_tensors.Image: [round(m) for m in mean], "others": 0}
        steps += [PhotometricDistortion(), v2.RandomZoomOut(fill=fill, side_range=(1.0, 4.0), p=0.5),
                  v2.RandomIoUCrop(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0,
                                   sampler_options=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], trials=50)]
    steps += [_resize(scale, keep_ratio), v2.RandomHorizontalFlip(flip), v2.ClampBoundingBoxes(),
              v2.SanitizeBoundingBoxes(min_size=1)]
    return v2.Compose(steps)


def det_test(scale: Sequence[int], keep_ratio: bool) -> v2.Compose:
    """The evaluation (and plain search-half) pipeline: the resize alone."""
    return v2.Compose([_resize(scale, keep_ratio)])


def _resize(scale: Sequence[int], keep_ratio: bool) -> v2.Transform:
    return RescaleKeepRatio([scale]) if keep_ratio else v2.Resize([int(scale[0]), int(scale[1])], antialias=True)


def seg_train(crop: Sequence[int], scales: Sequence[float], flip: float, base: Sequence[int]) -> v2.Compose:
    """FNA_SPEC §6.3: a random scale of ``base`` (h, w) from ``scales`` (keeping the ratio), a crop of at most
    ``crop``, a horizontal flip."""
    h, w = int(base[0]), int(base[1])
    return v2.Compose([RescaleKeepRatio([(int(h * s), int(w * s)) for s in scales]), CropAtMost(crop),
                       v2.RandomHorizontalFlip(flip)])


class Seeded:
    """Call ``transform`` under a torch generator seeded from NumPy's global one (see the module docstring)."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, *inputs: Any) -> Any:
        seed = int(np.random.randint(0, 2**31 - 1)) ^ random.getrandbits(31)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(*inputs)

    def __repr__(self) -> str:
        return f"Seeded({self.transform!r})"


def scale_factor(ori_hw: Sequence[int], new_hw: Sequence[int]) -> tuple[float, float]:
    """(w, h) factors from the original image to the transformed one (mmdet's ``scale_factor`` order)."""
    return new_hw[1] / ori_hw[1], new_hw[0] / ori_hw[0]


__all__ = ["CropAtMost", "PhotometricDistortion", "RescaleKeepRatio", "Seeded", "det_test", "det_train",
           "keep_ratio_size", "scale_factor", "seg_train"]
