"""What the search loop and the training loop share: optimisers from their config sections, the finite-loss
check, RNG capture and restore, and checkpoints (rank 0's full state, other ranks' own RNG and data position
beside it), all written atomically and read with ``weights_only`` loading.

A loop's checkpoint is the whole of its state, so a run killed at any step and resumed from its last
checkpoint continues bit-identically on the CPU.
"""
from __future__ import annotations

import pickle
import random
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fnatune.config.sections import OptimCfg
from fnatune.errors import FnatuneError
from fnatune.io import atomic_torch_save, previous_path

CHECKPOINT = "checkpoint.pt"


class NonFiniteLossError(FnatuneError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def build_optimizer(params: Iterable[nn.Parameter], spec: OptimCfg) -> torch.optim.Optimizer:
    params = list(params)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                                   eps=spec.eps)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay,
                                eps=spec.eps)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay,
                                 eps=spec.eps)
    raise FnatuneError(f"unknown optimizer '{spec.name}'; expected sgd, rmsprop, adam or adamw")


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float | None) -> None:
    """Clip the L2 norm of the gradients that exist (None: no clipping)."""
    if max_norm:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)


def all_finite(loss: Tensor, dp: Any = None) -> bool:
    """Whether ``loss`` is finite, on every data-parallel rank (so all ranks stop together)."""
    ok = bool(torch.isfinite(loss.detach()).all())
    return dp.all_ok(ok) if dp is not None else ok


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every RNG a loop draws from: torch, CUDA, NumPy, Python, and the loop's own generator."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": random.getstate(),
        "path": gen.get_state(),
    }


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    gen.set_state(state["path"])


def rank_file(path: Path, rank: int) -> Path:
    """Where rank ``rank`` (> 0) keeps its own RNG and stream state next to rank 0's checkpoint."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


class _Damaged(Exception):
    """A checkpoint file that cannot be read back (its text says how it failed)."""


class LoopCheckpoint:
    """The checkpoint of one loop in ``workdir``: format-tagged, atomic, per rank.

    ``save(full, own)`` writes ``full()`` (the whole state) on rank 0 and ``own()`` (what differs per rank:
    RNGs, the data shard's position) on every other rank, then waits until all ranks have written.
    ``load()`` returns ``(rank 0's state, this rank's own state or None)``, or None when there is none.
    """

    def __init__(self, workdir: str | Path, fmt: str, dp: Any = None) -> None:
        self.path = Path(workdir) / CHECKPOINT
        self.fmt = fmt
        self.dp = dp

    @property
    def is_main(self) -> bool:
        return self.dp is None or self.dp.is_main

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, full: Callable[[], dict[str, Any]], own: Callable[[], dict[str, Any]]) -> Path:
        if self.is_main:
            path = atomic_torch_save({"format": self.fmt, "version": 1, **full()}, self.path, keep_previous=True)
        else:
            path = atomic_torch_save(own(), rank_file(self.path, self.dp.rank), keep_previous=True)
        if self.dp is not None:
            self.dp.barrier()  # every rank's state of this step is on disk before anyone moves on
        return path

    def load(self) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        if self.dp is not None:
            # all ranks decide on the same file: without the first barrier a rank that starts late could see
            # the checkpoint that rank 0, already past its load, saved after BN recalibration (and then look
            # for its own rank file, which it never wrote); the second keeps rank 0 from saving before every
            # rank has looked
            self.dp.barrier()
            found = self.path.exists()
            self.dp.barrier()
        else:
            found = self.path.exists()
        if not found:
            return None
        state, used = self._read(self.path, full=True)
        own = None
        if not self.is_main:
            mine = rank_file(self.path, self.dp.rank)
            if not mine.exists():
                raise FnatuneError(f"{self.path} was written by a run with fewer data-parallel workers: "
                                   f"{mine.name} is missing; resume with the run's own worker count")
            own, _ = self._read(mine if used == self.path else previous_path(mine), full=False)
        return state, own

    def _read(self, path: Path, full: bool) -> tuple[dict[str, Any], Path]:
        """``path``'s state, or, when it is damaged (a truncated copy, a disk error), the previous checkpoint's
        with a line that says so; one clear error naming both when neither can be read."""
        try:
            return self._load_one(path, full), path
        except _Damaged as e:
            prev = previous_path(path)
            if not prev.exists():
                raise FnatuneError(f"{path} is damaged ({e}) and there is no earlier checkpoint; delete it to "
                                   "start this stage over") from None
            try:
                state = self._load_one(prev, full)
            except _Damaged as e2:
                raise FnatuneError(f"{path} is damaged ({e}) and so is the earlier {prev.name} ({e2}); delete both "
                                   "to start this stage over") from None
            print(f"fnatune: {path} is damaged ({e}); continuing from the previous checkpoint, {prev.name}",
                  file=sys.stderr, flush=True)
            return state, prev

    def _load_one(self, path: Path, full: bool) -> dict[str, Any]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            raise _Damaged(f"{type(e).__name__}: {' '.join(str(e).split())[:100]}") from None
        if not isinstance(state, dict) or (full and state.get("format") != self.fmt):
            raise FnatuneError(f"{path} is not a {self.fmt} checkpoint")
        return state

    def remove(self) -> None:
        """The loop is complete: its outputs stay, its checkpoint (and the one before it) goes."""
        self.path.unlink(missing_ok=True)
        previous_path(self.path).unlink(missing_ok=True)

    def describe(self) -> str:
        """For error messages: the last good checkpoint, or that there is none yet."""
        return str(self.path) if self.path.exists() else "none yet"


def plain(obj: Any) -> Any:
    """Tuples as lists, recursively, so ``weights_only`` loading accepts settings stored in a checkpoint."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
