"""The loops' shared checkpoint: every data-parallel rank makes the same resume decision."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fnatune.errors import FnatuneError
from fnatune.loop import LoopCheckpoint, rank_file


class _ThreadRanks:
    """The part of the data-parallel handle a checkpoint uses, for ranks that are threads of one process."""

    def __init__(self, rank: int, barrier: threading.Barrier) -> None:
        self.rank, self._barrier = rank, barrier

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self._barrier.wait(timeout=20)


def test_a_rank_that_starts_late_does_not_see_a_checkpoint_saved_after_the_others_looked(tmp_path: Path) -> None:
    """Rank 0 finds no checkpoint, then saves one at once (the fine-tune does, after BN recalibration); rank 1
    reaches its load later. Deciding alone, rank 1 would find rank 0's new file, look for its own rank file
    and fail (FileNotFoundError in CI's data-parallel test); both must start fresh."""
    barrier = threading.Barrier(2)
    found: dict[int, Any] = {}
    errors: list[BaseException] = []

    def rank(r: int, delay: float) -> None:
        try:
            time.sleep(delay)
            ck = LoopCheckpoint(tmp_path, "fmt", _ThreadRanks(r, barrier))
            found[r] = ck.load()
            ck.save(full=lambda: {"it": 1}, own=lambda: {"rank": r})
        except BaseException as e:  # reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(0, 0.0)), threading.Thread(target=rank, args=(1, 0.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert found == {0: None, 1: None}
    assert rank_file(tmp_path / "checkpoint.pt", 1).exists()

    # the next start resumes on both ranks, each with its own state
    again: dict[int, Any] = {}

    def resume(r: int) -> None:
        again[r] = LoopCheckpoint(tmp_path, "fmt", _ThreadRanks(r, barrier)).load()

    barrier.reset()
    threads = [threading.Thread(target=resume, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert again[0][0]["it"] == 1 and again[0][1] is None
    assert again[1][0]["it"] == 1 and again[1][1] == {"rank": 1}


def test_a_checkpoint_without_this_ranks_file_is_a_clear_error(tmp_path: Path) -> None:
    LoopCheckpoint(tmp_path, "fmt").save(full=lambda: {"it": 3}, own=dict)
    barrier = threading.Barrier(1)
    with pytest.raises(FnatuneError, match=r"fewer data-parallel workers: checkpoint\.rank2\.pt is missing"):
        LoopCheckpoint(tmp_path, "fmt", _ThreadRanks(2, barrier)).load()
