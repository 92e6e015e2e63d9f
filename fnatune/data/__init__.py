"""Data: resumable batch streams, search splits and synthetic datasets in real on-disk formats."""
from __future__ import annotations

from fnatune.data.split import split_indices
from fnatune.data.stream import BatchStream, stream_for

__all__ = ["BatchStream", "split_indices", "stream_for"]
