"""Learning-rate schedules as pure functions of the iteration number.

The loops set ``group["lr"]`` themselves from :meth:`LRSchedule.lr_at`, so a resumed run needs only
the iteration counter to be back on schedule (no scheduler object with hidden state to checkpoint).
Policies cover the recipes of FNA_SPEC: mmcv's step policy with linear warm-up (detection, §5.4/§6.1),
TorchSeg's poly policy with warm-up (segmentation, §6.3), plus constant and cosine.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

POLICIES = ("constant", "step", "poly", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """``lr_at(it)`` for ``it`` in ``[0, total_iters)``.

    Warm-up is linear from ``base_lr * warmup_ratio`` to ``base_lr`` over ``warmup_iters`` (mmcv
    "linear"). ``milestones`` are iteration numbers for the step policy.
    """

    base_lr: float
    total_iters: int
    policy: str = "constant"
    warmup_iters: int = 0
    warmup_ratio: float = 1.0 / 3.0
    milestones: Sequence[int] = field(default_factory=tuple)
    gamma: float = 0.1
    power: float = 0.9
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown LR policy '{self.policy}'; expected one of {', '.join(POLICIES)}")

    def lr_at(self, it: int) -> float:
        lr = self._decayed(it)
        if it < self.warmup_iters:
            k = (1 - it / self.warmup_iters) * (1 - self.warmup_ratio)
            lr = lr * (1 - k)
        return lr

    def _decayed(self, it: int) -> float:
        if self.policy == "constant":
            return self.base_lr
        if self.policy == "step":
            return self.base_lr * self.gamma ** sum(1 for m in self.milestones if it >= m)
        progress = min(max(it, 0), self.total_iters) / max(self.total_iters, 1)
        if self.policy == "poly":
            return (self.base_lr - self.min_lr) * (1 - progress) ** self.power + self.min_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: object, lr: float) -> None:
    for group in optimizer.param_groups:  # type: ignore[attr-defined]
        group["lr"] = lr
