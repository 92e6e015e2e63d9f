"""What RetinaNet and SSDLite share on the torchvision backend: batching and normalising images, mmdet's anchor
grids, its max-IoU assigner, box coding and post-processing, built on torchvision's ops (``box_iou``,
``BoxCoder``, ``batched_nms``). Each rule follows the mmdet 3.3 code the mm backend runs, so both backends train
the same detector; where they differ, the docstring says so.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou

#: mmdet's ``wh_ratio_clip`` (16/1000) as the largest |log| scale change a decoded box may get
BBOX_CLIP = abs(float(torch.log(torch.tensor(16 / 1000))))


def batch_images(imgs: Sequence[Tensor], mean: Tensor, std: Tensor, device: torch.device, divisor: int = 1,
                 size: Sequence[int] | None = None) -> Tensor:
    """uint8 images -> one float batch: (x - mean) / std, then zero-padded at the bottom and right to the largest
    image (or ``size``), rounded up to ``divisor`` (mmdet's/mmseg's data preprocessors)."""
    h = max(int(i.shape[-2]) for i in imgs) if size is None else max(int(size[0]), *(int(i.shape[-2]) for i in imgs))
    w = max(int(i.shape[-1]) for i in imgs) if size is None else max(int(size[1]), *(int(i.shape[-1]) for i in imgs))
    h, w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    out = torch.zeros(len(imgs), 3, h, w, device=device)
    for k, img in enumerate(imgs):
        x = (img.to(device, non_blocking=True).float() - mean.view(3, 1, 1)) / std.view(3, 1, 1)
        out[k, :, : x.shape[-2], : x.shape[-1]] = x
    return out


def grid_anchors(base: Tensor, stride: float, feat_hw: Sequence[int]) -> Tensor:
    """mmdet's ``grid_priors``: ``base`` (A x 4) shifted to every cell, row-major, anchors innermost (the order of
    a head's outputs permuted to N x H x W x A)."""
    h, w = int(feat_hw[0]), int(feat_hw[1])
    xs = torch.arange(w, dtype=torch.float32, device=base.device) * stride
    ys = torch.arange(h, dtype=torch.float32, device=base.device) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def valid_flags(num_base: int, stride: float, feat_hw: Sequence[int], img_hw: Sequence[int], device: torch.device
                ) -> Tensor:
    """mmdet's ``valid_flags``: anchors of cells that lie in the image's unpadded part (ceil(size / stride))."""
    h, w = int(feat_hw[0]), int(feat_hw[1])
    vh, vw = min(h, int(-(-img_hw[0] // stride))), min(w, int(-(-img_hw[1] // stride)))
    ok = torch.zeros(h, w, dtype=torch.bool, device=device)
    ok[:vh, :vw] = True
    return ok.reshape(-1, 1).expand(-1, num_base).reshape(-1)


def base_anchors(base_size: float, scales: Sequence[float], ratios: Sequence[float], center: float = 0.0,
                 scale_major: bool = True) -> Tensor:
    """mmdet's ``gen_single_level_base_anchors``: h/w = ratio, size ``base_size * scale``, not rounded."""
    r = torch.tensor(ratios, dtype=torch.float32)
    s = torch.tensor(scales, dtype=torch.float32)
    h_ratios = r.sqrt()
    w_ratios = 1 / h_ratios
    if scale_major:
        ws, hs = (base_size * w_ratios[:, None] * s[None, :]).reshape(-1), (base_size * h_ratios[:, None] * s[None, :]).reshape(-1)
    else:
        ws, hs = (base_size * s[:, None] * w_ratios[None, :]).reshape(-1), (base_size * s[:, None] * h_ratios[None, :]).reshape(-1)
    return torch.stack([center - 0.5 * ws, center - 0.5 * hs, center + 0.5 * ws, center + 0.5 * hs], dim=1)


def assign(anchors: Tensor, valid: Tensor, gt: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float = 0.0,
           all_ties: bool = True) -> Tensor:
    """mmdet's ``MaxIoUAssigner`` for one image: -1 background, -2 ignored (between the thresholds, or an invalid
    anchor), else the index of the anchor's box. Each box also takes its best anchor(s) (all ties, or one) when
    that IoU reaches ``min_pos_iou``; a box that overlaps no anchor at all takes none (mmdet would take every
    anchor at IoU 0 when ``min_pos_iou`` is 0, a degenerate case)."""
    out = torch.full((len(anchors),), -2, dtype=torch.long, device=anchors.device)
    if len(gt) == 0:
        out[valid] = -1
        return out
    iou = box_iou(gt, anchors)
    iou[:, ~valid] = -1.0
    best, arg = iou.max(0)
    out[(best >= 0) & (best < neg_iou)] = -1
    pos = best >= pos_iou
    out[pos] = arg[pos]
    gt_best, gt_arg = iou.max(1)
    for i in range(len(gt)):
        if gt_best[i] >= min_pos_iou and gt_best[i] > 0:
            if all_ties:
                out[iou[i] == gt_best[i]] = i
            else:
                out[gt_arg[i]] = i
    out[~valid] = -2
    return out


def box_coder(stds: Sequence[float]) -> BoxCoder:
    """mmdet's ``DeltaXYWHBBoxCoder`` (means 0, ``stds``) as torchvision's coder (weights = 1 / stds)."""
    return BoxCoder(tuple(1.0 / s for s in stds), bbox_xform_clip=BBOX_CLIP)


def smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth L1 (mmdet's ``SmoothL1Loss`` before its average factor); beta 0 is L1."""
    if beta <= 0:
        return (pred - target).abs().sum()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


def decode(coder: BoxCoder, deltas: Tensor, anchors: Tensor, img_hw: Sequence[int]) -> Tensor:
    """Boxes from deltas, clipped to the (unpadded, resized) image as mmdet's ``max_shape`` does."""
    boxes = coder.decode_single(deltas, anchors)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_hw[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_hw[0])
    return boxes


def top_candidates(scores: Tensor, score_thr: float, nms_pre: int) -> tuple[Tensor, Tensor, Tensor]:
    """mmdet's ``filter_scores_and_topk`` on one level's (anchors x classes) scores: the pairs above ``score_thr``,
    the ``nms_pre`` best of them. Returns (scores, anchor indices, labels)."""
    keep = scores > score_thr
    s = scores[keep]
    idx = keep.nonzero()
    k = min(nms_pre, len(s))
    s, order = s.sort(descending=True)
    s, idx = s[:k], idx[order[:k]]
    return s, idx[:, 0], idx[:, 1]


def finish(boxes: Tensor, scores: Tensor, labels: Tensor, factor: Sequence[float], nms_iou: float, max_per_img: int
           ) -> dict[str, Tensor]:
    """mmdet's ``_bbox_post_process``: boxes back to the original image (÷ scale factor (w, h)), empty boxes
    dropped, class-wise NMS, the ``max_per_img`` best."""
    if len(boxes):
        boxes = boxes / boxes.new_tensor([factor[0], factor[1], factor[0], factor[1]])
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def detect(cls: Sequence[Tensor], reg: Sequence[Tensor], anchors: Sequence[Tensor], batch: dict[str, Any],
           coder: BoxCoder, test_cfg: dict[str, Any], scores_of: Any) -> list[dict[str, Tensor]]:
    """mmdet's test-time rules over a batch: per image and level, ``scores_of(logits)`` (anchors x classes), the best
    candidates, their decoded boxes; then :func:`finish` per image."""
    out = []
    for k in range(len(batch["img"])):
        boxes, scores, labels = [], [], []
        for c, r, a in zip(cls, reg, anchors):
            s, idx, lab = top_candidates(scores_of(c[k].float()), test_cfg["score_thr"], test_cfg["nms_pre"])
            boxes.append(decode(coder, r[k][idx].float(), a[idx], batch["img_shape"][k]))
            scores.append(s)
            labels.append(lab)
        out.append(finish(torch.cat(boxes), torch.cat(scores), torch.cat(labels), batch["scale_factor"][k],
                          test_cfg["nms_iou"], test_cfg["max_per_img"]))
    return out


def targets_of(batch: dict[str, Any], device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """(boxes, labels) of every image of a batch, on ``device``."""
    return [(b.to(device).float().reshape(-1, 4), lab.to(device).long()) for b, lab in zip(batch["boxes"], batch["labels"])]


def collate(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A dict of lists: images keep their own sizes until the model pads them on its device."""
    return {k: [s[k] for s in samples] for k in samples[0]}
