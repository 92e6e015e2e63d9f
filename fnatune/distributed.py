"""Data-parallel search and fine-tuning on top of an initialised ``torch.distributed`` process group.

The launcher (Ray Train, through :mod:`fnatune.tune`) starts N workers and sets up the group: gloo on
CPUs, nccl on GPUs. Inside, the loops stay the single-process loops with three additions:

* **one path for all**: rank 0 samples the single path of a weight step and broadcasts it, so every
  worker trains the same sub-network (FNA_SPEC §5: one path per step) on its own shard of the batch;
* **averaged gradients**: after ``backward`` the gradients of the weights (weight steps) or of alpha
  (arch steps) are averaged across workers, so every replica takes the same optimiser step and alpha
  stays identical everywhere;
* **rank 0's buffers**: BN running statistics are broadcast from rank 0 before each step (what
  ``DistributedDataParallel`` does by default), so the replicas' states do not drift apart.

Plain all-reduce of the gradients rather than ``DistributedDataParallel``: each weight step touches a
different subset of the super net's parameters, which DDP only handles with ``find_unused_parameters``
and a bucket rebuild per step; the explicit version is exact and as fast at these sizes.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset


class DataParallel:
    """The calling worker's view of the group; every method is a collective (all ranks must call it)."""

    def __init__(self) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process group")
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.backend = dist.get_backend()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def broadcast_path(self, path: Sequence[int]) -> list[int]:
        """Rank 0's sampled path, on every rank."""
        t = torch.tensor(list(path), dtype=torch.long, device=self._device())
        dist.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]

    def average_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Mean of each gradient over the workers, flattened into one all-reduce per dtype."""
        grads = [p.grad for p in params if p.grad is not None]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for g in group:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n

    def average_values(self, values: Sequence[float]) -> list[float]:
        """The mean of each number over the workers (e.g. losses each worker measured on its own shard)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return [float(v) / self.world for v in t.tolist()]

    def broadcast_buffers(self, module: nn.Module) -> None:
        for b in module.buffers():
            dist.broadcast(b.data, src=0)

    def barrier(self) -> None:
        dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True only if ``ok`` holds on every rank (e.g. a finite loss), so all ranks stop together."""
        t = torch.tensor([0 if ok else 1], dtype=torch.long, device=self._device())
        dist.all_reduce(t)
        return int(t.item()) == 0


def shard(ds: Dataset, rank: int, world: int) -> Dataset:
    """Every ``world``-th item from ``rank``, cut to the same length on every rank (equal step counts,
    so no worker waits in a collective that the others never reach)."""
    n = (len(ds) // world) * world  # type: ignore[arg-type]
    if n == 0:
        raise ValueError(f"{len(ds)} samples cannot be split over {world} workers")  # type: ignore[arg-type]
    return Subset(ds, range(rank, n, world))


def current() -> DataParallel | None:
    """The group this process belongs to, or None in a plain single-process run."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DataParallel()
    return None
