"""Atomic file writes: a killed process never leaves a half-written checkpoint, arch or report.

Everything is written to a temporary file in the destination folder, flushed to disk, then moved over
the destination with ``os.replace`` (atomic on POSIX and Windows within one file system).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically. Save only tensors and plain containers so ``weights_only`` loading works."""
    import torch  # here, not at the top: the driver of `fnatune run` writes JSON only and never needs torch

    return _atomic(path, lambda f: torch.save(obj, f))


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock held for the block, shared by every process on this machine (and on a shared
    filesystem that supports ``flock``): concurrent trials that generate the same dataset take turns, and
    the second finds the first one's finished set."""
    import fcntl

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
