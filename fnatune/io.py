"""Atomic file writes: a killed process never leaves a half-written checkpoint, arch or report.

Everything is written to a temporary file in the destination folder, flushed to disk, then moved over
the destination with ``os.replace`` (atomic on POSIX and Windows within one file system).
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from fnatune.errors import DiskFullError

#: write errors that mean "no room": the device is full, or the user's quota is
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def previous_path(path: str | Path) -> Path:
    """Where :func:`atomic_torch_save` with ``keep_previous`` keeps the file it replaced (``x.pt`` -> ``x.prev.pt``)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def _atomic(path: str | Path, write: Callable[[IO[bytes]], None], keep_previous: bool = False) -> Path:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and dest.exists():
            os.replace(dest, previous_path(dest))
        os.replace(tmp, dest)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        if _no_space(e):
            kept = f"the last good {dest.name} is kept" if dest.exists() else f"nothing was written to {dest.name}"
            raise DiskFullError(f"no space left on the device writing {dest} ({kept}); free space there, then "
                                "resume the run") from None
        raise
    return dest


def _no_space(e: BaseException) -> bool:
    """Whether ``e`` (or what it wraps: torch.save reports a full disk as a RuntimeError from its C++ writer)
    says the device or the quota is full."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return True
        if isinstance(e, RuntimeError) and ("No space left on device" in str(e) or "Disk quota exceeded" in str(e)):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path, keep_previous: bool = False) -> Path:
    """``torch.save`` atomically. Save only tensors and plain containers so ``weights_only`` loading works.
    ``keep_previous``: the file this one replaces stays as :func:`previous_path` (a loop's fallback when its
    newest checkpoint is found damaged)."""
    import torch  # here, not at the top: the driver of `fnatune run` writes JSON only and never needs torch

    return _atomic(path, lambda f: torch.save(obj, f), keep_previous)


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
