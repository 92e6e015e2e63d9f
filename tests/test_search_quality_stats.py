"""The statistics of benchmarks/search_quality.py (issue 27): the rank test, the bootstrap interval and the
agreement of derived archs, on cases whose answers are known."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fnatune.space import SearchSpace, StageSpec

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("search_quality", ROOT / "benchmarks/search_quality.py")
sq = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules.setdefault("search_quality", sq)  # its dataclasses look their module up while they are built
_spec.loader.exec_module(sq)  # type: ignore[union-attr]


def test_rank_test_is_exact_on_small_samples() -> None:
    # every searched value above every random one: U = 3*4, and only 1 of C(7,3) = 35 splits is as extreme
    u, p = sq.mann_whitney_greater([10.0, 11.0, 12.0], [1.0, 2.0, 3.0, 4.0])
    assert u == 12 and p == pytest.approx(1 / 35)
    u, p = sq.mann_whitney_greater([1.0, 2.0], [3.0, 4.0])
    assert u == 0 and p == 1.0
    u, _ = sq.mann_whitney_greater([2.0], [2.0])  # a tie counts half
    assert u == 0.5


def test_bootstrap_interval_brackets_a_clear_difference_and_zero_when_there_is_none() -> None:
    lo, hi = sq.bootstrap_interval([80.0, 81.0, 82.0, 83.0, 84.0], [70.0 + i * 0.5 for i in range(10)])
    assert 0 < lo < 82 - 72.25 < hi
    lo, hi = sq.bootstrap_interval([70.0, 75.0, 80.0], [70.0, 75.0, 80.0, 72.0, 78.0])
    assert lo < 0 < hi


def test_agreement_is_the_share_of_identical_searchable_layers() -> None:
    space = SearchSpace(name="t", stem_channels=8, stages=(StageSpec(8, 1, 1, ("k3_e1",)),
                                                             StageSpec(8, 1, 2, ("k3_e3", "k5_e3"))), taps=("1",))
    a = space.arch([["k3_e1"], ["k3_e3", "k3_e3"]])
    b = space.arch([["k3_e1"], ["k3_e3", "k5_e3"]])
    assert sq.agreement([a, a]) == 1.0 and sq.agreement([a, b]) == 0.5 and sq.agreement([a]) == 1.0


def test_kendall_tau_counts_concordant_and_discordant_pairs() -> None:
    assert sq.kendall_tau([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]) == 1.0
    assert sq.kendall_tau([1.0, 2.0, 3.0], [30.0, 20.0, 10.0]) == -1.0
    # pairs (0,1) concordant, (0,2) concordant, (1,2) discordant
    assert sq.kendall_tau([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(1 / 3)
    assert sq.kendall_tau([1.0, 1.0], [1.0, 2.0]) == 0.0  # a tie counts 0
