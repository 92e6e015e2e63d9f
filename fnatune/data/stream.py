"""Resumable batch streams: the data position is part of a checkpoint.

A :class:`BatchStream` walks a dataset in passes. Pass ``p`` uses a permutation drawn from
``(seed, p)``, and sample ``i`` of pass ``p`` is loaded with Python's and NumPy's global RNGs seeded
from ``(seed, p, i)``. So the batches *and their random augmentations* are a pure function of
``(seed, pass, offset)``: a resumed run sees exactly the batches the killed one would have seen, with
or without worker processes.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fnatune.errors import DataError, FnatuneError


def _mix(*ints: int) -> int:
    """A 32-bit seed from several integers (stable across processes, unlike ``hash``)."""
    h = 0x9E3779B9
    for v in ints:
        h = (h ^ (int(v) & 0xFFFFFFFF)) * 0x01000193 & 0xFFFFFFFF
        h ^= h >> 15
    return h


class _SeededItems(Dataset):
    """``dataset[(pass, index)]``: seeds ``random`` and ``numpy.random`` from (seed, pass, index) first."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        p, i = key
        s = _mix(self.seed, p, i)
        random.seed(s)
        np.random.seed(s)
        return self.dataset[i]


class BatchStream:
    """An endless, resumable stream of batches over ``dataset``.

    ``len(stream)`` is the number of batches in one pass. ``state_dict()`` is ``{"pass", "offset"}``
    (plain ints), which is all a checkpoint needs to continue at the next batch.
    """

    def __init__(self, dataset: Any, batch_size: int, collate_fn: Callable[[list[Any]], Any] | None = None,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True, num_workers: int = 0) -> None:
        n = len(dataset)
        if n == 0:
            raise ValueError("cannot stream an empty dataset")
        if drop_last and n < batch_size:
            raise ValueError(f"the dataset has {n} samples, fewer than one batch of {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pass_index = 0
        self.offset = 0
        self._it: Iterator[Any] | None = None

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self, p: int) -> list[list[tuple[int, int]]]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, p, 7))
            order: Sequence[int] = torch.randperm(n, generator=g).tolist()
        else:
            order = range(n)
        out = [[(p, i) for i in order[k:k + self.batch_size]] for k in range(0, n, self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def _open(self) -> None:
        batches = self._batches(self.pass_index)[self.offset:]
        # A generator of its own: a DataLoader draws its base seed from the *global* torch RNG when its
        # iterator is created, which would make the global RNG (dropout) depend on when a pass was opened,
        # and a run resumed mid-pass would see other dropout masks than the uninterrupted run.
        self._it = iter(DataLoader(_SeededItems(self.dataset, self.seed), batch_sampler=batches,
                                   collate_fn=self.collate_fn, num_workers=self.num_workers,
                                   generator=torch.Generator().manual_seed(_mix(self.seed, self.pass_index, 11))))

    def next(self) -> Any:
        if self._it is None:
            self._open()
        assert self._it is not None
        try:
            batch = self._load()
        except StopIteration:
            self.pass_index, self.offset = self.pass_index + 1, 0
            self._open()
            batch = self._load()
        self.offset += 1
        return batch

    def _load(self) -> Any:
        """The next batch. A sample that fails to load (a library's decode or transform error) fails the same
        way on every try: it becomes a :class:`DataError` naming the batch's samples, which stops a trial
        instead of sending it through Tune's retries. A killed worker process can pass, and stays as it is."""
        assert self._it is not None
        try:
            return next(self._it)
        except (StopIteration, FnatuneError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:
            if "DataLoader worker" in str(e) and ("killed" in str(e) or "exited unexpectedly" in str(e)):
                raise
            batches = self._batches(self.pass_index)
            where = [i for _, i in batches[self.offset]] if self.offset < len(batches) else []
            last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise DataError(f"batch {self.offset} of pass {self.pass_index} failed to load ({type(e).__name__}: "
                            f"{last}); its samples: {_describe(self.dataset, where)}") from e

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_index, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_index, self.offset = int(state["pass"]), int(state["offset"])
        self._it = None


def _describe(dataset: Any, indices: Sequence[int]) -> str:
    """The samples' files where the data set can say (mmengine sets: ``get_data_info(i)['img_path']``), else
    their indices and the data set's type."""
    base, idx = dataset, list(indices)
    while hasattr(base, "indices") and hasattr(base, "dataset"):  # Subset(s)
        idx = [int(base.indices[i]) for i in idx]
        base = base.dataset
    files = []
    for i in idx:
        try:
            info = base.get_data_info(i)
            files.append(str(info.get("img_path") or info.get("file_name") or i))
        except Exception:
            files.append(str(i))
    return ", ".join(files) + ("" if hasattr(base, "get_data_info") else f" of a {type(base).__name__}")


def require_batch(n: int, batch_size: int, setting: str, what: str) -> None:
    """One clear line when ``what`` (``n`` samples) cannot fill one batch of ``setting`` (a config key such as
    ``search.batch_size``): a small real data set is the user's to size, and the stream drops partial batches."""
    if n < batch_size:
        raise FnatuneError(f"{what} has {n} sample(s), fewer than one batch of {setting}={batch_size}: lower it "
                           f"(--set {setting}={max(n, 1)}) or use a larger data set")


def stream_for(dataset: Any, batch_size: int, collate_fn: Callable[[list[Any]], Any] | None, seed: int,
               num_workers: int = 0, dp: Any = None, setting: str = "batch_size",
               what: str = "the data set") -> BatchStream:
    """A stage's batch stream. Data-parallel (``dp``, a :class:`~fnatune.distributed.DataParallel`): this
    worker's shard, with the global batch split over the workers and a seed of its own. ``setting`` and
    ``what`` name the batch size's config key and the data, for the error when one batch cannot be filled."""
    require_batch(len(dataset), batch_size, setting, what)
    if dp is not None:
        from fnatune.distributed import shard

        if batch_size % dp.world:
            raise FnatuneError(f"batch size {batch_size} does not split over resources.workers={dp.world}; "
                               f"use a multiple of {dp.world}")
        dataset, batch_size, seed = shard(dataset, dp.rank, dp.world), batch_size // dp.world, seed + 7919 * dp.rank
    return BatchStream(dataset, batch_size, collate_fn, seed=seed, num_workers=num_workers)
