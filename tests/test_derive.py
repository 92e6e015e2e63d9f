"""Deriving the arch at the end of a search (fnatune/derive.py) and the annealed temperature (issue 27): each
option does what it says, and FNA's default path (argmax, constant temperature) is left exactly as it was."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from fnatune.arch import Arch
from fnatune.config.sections import DeriveCfg
from fnatune.derive import derive, top_paths
from tests.test_search import _searcher


def test_top_paths_are_the_most_probable_paths_by_enumeration() -> None:
    g = torch.Generator().manual_seed(3)
    alphas = [torch.randn(n, generator=g) for n in (4, 3, 5, 2)]
    logp = [torch.log_softmax(a.double(), -1) for a in alphas]
    every = sorted(((sum(float(lp[i]) for lp, i in zip(logp, path)), list(path))
                    for path in itertools.product(*(range(len(a)) for a in alphas))), key=lambda t: -t[0])
    got = top_paths(alphas, 11)
    assert [p for p, _ in got] == [p for _, p in every[:11]]
    assert [lp for _, lp in got] == pytest.approx([lp for lp, _ in every[:11]], abs=1e-12)
    assert got[0][0] == [int(a.argmax()) for a in alphas]
    # the ranking is the temperature's business only through alpha / T, which keeps the order
    assert [p for p, _ in top_paths([a / 0.3 for a in alphas], 11)] == [p for p, _ in got]


def test_top_paths_break_ties_by_index_and_refuse_k_below_one() -> None:
    assert [p for p, _ in top_paths([torch.zeros(2), torch.zeros(2)], 4)] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_paths([torch.zeros(2)], 0)


def _finished(tmp_path, **overrides):  # type: ignore[no-untyped-def]
    s = _searcher(tmp_path, **overrides)
    result = s.run()
    assert result is not None
    return s, result


def test_fna_default_derives_the_argmax_and_reads_no_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s, result = _finished(tmp_path)
    assert result.derivation is not None and result.derivation.method == "argmax"
    assert result.arch == s.supernet.derive()
    before = s.arch_stream.state_dict()
    assert s.derive().arch == result.arch
    assert s.arch_stream.state_dict() == before


def test_options_at_their_neutral_values_search_bit_identically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A final temperature equal to the first is FNA's constant temperature, and scoring only the most probable
    path is FNA's argmax: the same alpha, weights and arch to the bit."""
    fna, r_fna = _finished(tmp_path / "fna")
    opt, r_opt = _finished(tmp_path / "opt", temperature_final=1.0, derive={"method": "paths", "top_k": 1})
    assert all(torch.equal(a, b) for a, b in zip(fna.alphas, opt.alphas))
    assert all(torch.equal(a, b) for a, b in zip(fna.weights, opt.weights))
    assert r_opt.arch == r_fna.arch and r_opt.derivation is not None and r_opt.derivation.method == "paths"
    assert len(r_opt.derivation.scored) == 1


def test_annealing_lowers_the_temperature_geometrically_over_the_searching_epochs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = _searcher(tmp_path, epochs=5, warmup_epochs=1, temperature=2.0, temperature_final=0.5)
    assert [s.temperature_at(e) for e in range(5)] == pytest.approx([2.0, 2.0, 2.0 * 0.25 ** (1 / 3),
                                                                      2.0 * 0.25 ** (2 / 3), 0.5])
    mixed: list[float] = []
    use_mixed = s.supernet.use_mixed
    s.supernet.use_mixed = lambda t: (mixed.append(t), use_mixed(t))[1]  # type: ignore[method-assign]
    result = s.run()
    assert result is not None
    # one arch step per weight step of each searching epoch (2 per epoch), at that epoch's temperature
    assert mixed == pytest.approx([s.temperature_at(e) for e in range(1, 5) for _ in range(2)])
    assert [h["metrics"]["temperature"] for h in s.history] == pytest.approx([s.temperature_at(e) for e in range(5)])
    # the final probabilities are softmax(alpha / T_final)
    probs = [torch.softmax(a.detach() / 0.5, -1).tolist() for a in s.alphas]
    assert result.probabilities == probs
    const = _searcher(tmp_path / "const", epochs=5, warmup_epochs=1, temperature=2.0)
    const.run()
    assert any(not torch.equal(a, b) for a, b in zip(const.alphas, s.alphas))
    assert "temperature" not in const.history[-1]["metrics"]


def test_paths_keeps_the_path_with_the_best_score_and_leaves_the_supernet_as_it_was(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s, _ = _finished(tmp_path)
    distinct: list = []
    for path, _ in top_paths(s.alphas, 16):
        arch = s.supernet.arch_of(path).sorted_skips()
        if arch not in distinct:
            distinct.append(arch)
    favourite = distinct[2]  # the third most probable arch: the task loss below makes it the best
    task = s.loss_fn

    def loss(batch):  # type: ignore[no-untyped-def]
        real = task(batch)
        kind, path = s.supernet.mode
        assert kind == "path"
        return real * 0 + (0.0 if s.supernet.arch_of(path).sorted_skips() == favourite else 1.0)

    s.loss_fn = loss
    state = {k: v.clone() for k, v in s.model.state_dict().items()}
    d = s.derive(DeriveCfg(method="paths", top_k=4, batches=2))
    assert d.arch == favourite
    assert [e["arch"] for e in sorted(d.scored, key=lambda e: e["rank"])] == [a.block_string() for a in distinct[:4]]
    assert d.scored[0]["rank"] == 2 and len(d.scored) == 4
    assert [e["score"] for e in d.scored] == sorted(e["score"] for e in d.scored)
    assert d.scored[0]["task_loss"] == 0.0 and all(e["task_loss"] == 1.0 for e in d.scored[1:])
    after = s.model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # BN running statistics included
    assert s.model.training


def test_paths_scores_the_search_objective_so_lambda_can_prefer_a_cheaper_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s, _ = _finished(tmp_path)
    s.loss_fn = lambda batch: torch.tensor(0.5)  # every path fits the task equally: the cost term decides
    d = s.derive(DeriveCfg(method="paths", top_k=6, batches=1))
    costs = [e["cost"] for e in d.scored]
    assert d.scored[0]["cost"] == min(costs)
    lam = s.s.cost.lam
    for e in d.scored:
        assert e["score"] == pytest.approx(0.5 + lam * math.log10(s.s.cost.gamma * e["cost"]), rel=1e-12)
        arch = s.supernet.space.arch([list(ops) for ops in Arch.parse_blocks(e["arch"])])
        assert e["cost"] == s.cost.of_arch(arch)


def test_paths_without_the_search_parts_is_one_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s, _ = _finished(tmp_path)
    from fnatune.errors import FnatuneError

    with pytest.raises(FnatuneError, match="needs the search's model"):
        derive(DeriveCfg(method="paths"), s.supernet)
