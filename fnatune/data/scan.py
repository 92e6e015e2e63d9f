"""Checking a data set's image files before a run starts: each file is an image, is complete, has the size
its annotations or its image say, in parallel and cached.

Without this, a truncated JPEG or a label of the wrong size surfaces hours into a run as a library error
deep inside a data loader (``OSError: image file is truncated``), and every Tune retry meets it again.

* The check per file is cheap: the header (format and size, which PIL reads without decoding) and the last
  bytes (a JPEG ends with its EOI marker, a PNG with its IEND chunk), which is how a cut-off download or copy
  shows. Label images are decoded in full once, because their values are what is checked.
* Files are checked by a thread pool (PIL and numpy release the GIL while they read and decode).
* Results are cached per data set by path, size and modification time (``$FNATUNE_CACHE/scan/``), so a
  second run on an unchanged 100k-image set re-reads nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json

_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"


def cache_root() -> Path:
    return Path(os.environ.get("FNATUNE_CACHE", Path.home() / ".cache" / "fnatune")) / "scan"


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, after checking it is one and is not cut off."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
    except UnidentifiedImageError:
        raise FnatuneError(f"{path} is not an image file (PIL cannot identify it)") from None
    except OSError as e:
        raise FnatuneError(f"{path} cannot be read as an image: {e}") from None
    end = {"JPEG": _JPEG_END, "PNG": _PNG_END}.get(fmt or "")
    if end is not None:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 32))
            tail = f.read()
        if end not in tail[-len(end) - 16:]:  # some writers pad a few bytes after the end marker
            raise FnatuneError(f"{path} is truncated: a {fmt} file that stops before its end marker (a partial "
                               f"download or copy?); replace it")
    return int(size[0]), int(size[1])


class Scan:
    """Runs ``check(path) -> JSON-able result`` over many files, in parallel, remembering each file's result
    by (size, mtime) in one cache file per ``(root, kind)``. A check raises :class:`FnatuneError` for a bad
    file; errors are not cached, so a fixed file is checked again."""

    def __init__(self, root: str | Path, kind: str, workers: int | None = None) -> None:
        key = hashlib.sha1(f"{Path(root).resolve()}|{kind}".encode()).hexdigest()[:16]
        self.path = cache_root() / f"{kind}-{key}.json"
        self.workers = workers or min(16, 2 * (os.cpu_count() or 1))
        try:
            self.cache: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.cache = {}

    def run(self, paths: Iterable[Path], check: Callable[[Path], Any]) -> list[Any]:
        paths = list(paths)
        stamps = []
        for p in paths:
            try:
                st = p.stat()
            except FileNotFoundError:
                raise FnatuneError(f"file missing: {p}") from None
            stamps.append([st.st_size, st.st_mtime_ns])
        todo = [i for i, p in enumerate(paths) if self.cache.get(str(p), {}).get("stamp") != stamps[i]]
        if todo:
            error: FnatuneError | None = None
            with ThreadPoolExecutor(self.workers) as pool:
                futures = [pool.submit(check, paths[i]) for i in todo]
                for i, fut in zip(todo, futures):  # in order: the first bad file in the list is the one reported
                    try:
                        self.cache[str(paths[i])] = {"stamp": stamps[i], "result": fut.result()}
                    except FnatuneError as e:
                        error = error or e
            try:  # the good files are remembered even when a bad one stops the run
                atomic_write_json(self.path, self.cache)
            except OSError:  # a read-only cache is slower next time, nothing more
                pass
            if error is not None:
                raise error
        return [self.cache[str(p)]["result"] for p in paths]


def check_sizes(paths: Sequence[Path], expected: Sequence[tuple[int, int]], what: str, scan: Scan) -> None:
    """Each image at ``paths`` is complete and ``expected[i]`` (width, height) in size; ``what`` says where
    the expected size comes from, for the message."""
    sizes = scan.run(paths, lambda p: list(image_size(p)))
    for p, got, want in zip(paths, sizes, expected):
        if tuple(got) != tuple(want):
            raise FnatuneError(f"{p} is {got[0]}x{got[1]}, but {what} says {want[0]}x{want[1]}")
