"""Latency tables: real shapes, cache reuse keyed by device/dtype/shape, and the MAdds-table interface."""
from __future__ import annotations

import math

import pytest
import torch

from fnatune import latency
from fnatune.latency import LatencyTable, latency_table
from fnatune.nets import SuperNet
from tests.helpers import tiny_space


def test_table_times_every_candidate_and_is_reused_from_the_cache(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    net = SuperNet(tiny_space())
    seen: list[tuple[int, ...]] = []
    real = latency.time_module

    def spy(module, shape, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(tuple(shape))
        return real(module, shape, *args, **kwargs)

    monkeypatch.setattr(latency, "time_module", spy)
    table = latency_table(net, (32, 32), repeats=2, warmup=1, cache_dir=tmp_path)
    assert not table.meta["cached"]
    assert [len(r) for r in table.ms] == [len(c) for c in table.candidates]
    assert all(v > 0 for row in table.ms for v in row)
    # stage 1 layer 0 sees the 8-channel 16x16 output of the stem + first layer (stride 2)
    assert (1, 8, 16, 16) in seen and (1, 12, 8, 8) in seen and (1, 3, 32, 32) in seen
    n_timed = len(seen)
    assert n_timed == sum(len(r) for r in table.ms) + 2  # + stem + the fixed first layer

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("a cached table must not be measured again")

    monkeypatch.setattr(latency, "time_module", boom)
    again = latency_table(net, (32, 32), repeats=2, warmup=1, cache_dir=tmp_path)
    assert again.meta["cached"] and again.ms == table.ms
    with pytest.raises(AssertionError):  # another input size is another key
        latency_table(net, (64, 64), repeats=2, warmup=1, cache_dir=tmp_path)


def test_expected_latency_matches_a_hand_computation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t = LatencyTable((8, 8), [(1, 0), (1, 1)], [("a", "b"), ("a", "skip")], [[1.0, 3.0], [2.0, 0.0]], 0.5)
    a1 = torch.tensor([0.0, math.log(3.0)])   # p = 1/4, 3/4
    a2 = torch.tensor([0.0, 0.0])             # p = 1/2, 1/2
    assert float(t.expected([a1, a2])) == pytest.approx(0.25 * 1 + 0.75 * 3 + 0.5 * 2)
    assert t.of_indices([1, 0]) == 5.0
    t.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").ms == t.ms
