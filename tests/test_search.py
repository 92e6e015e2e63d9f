"""The search loop: step isolation, sampling law, cost term, derivation, schedule and exact resume."""
from __future__ import annotations

import math

import pytest
import torch

from fnatune.config import SearchCfg
from fnatune.config.sections import CostCfg
from fnatune.cost import MAddsTable, madds_table
from fnatune.data import BatchStream, split_indices
from fnatune.nets import SuperNet
from fnatune.search import NonFiniteLossError, Searcher, SearchObserver, cost_term
from tests.helpers import TinySeg, ce_loss, tiny_dataset, tiny_space


def _searcher(tmp_path, seed: int = 0, **overrides):  # type: ignore[no-untyped-def]
    observer = overrides.pop("observer", None)
    torch.manual_seed(seed)
    net = SuperNet(tiny_space())
    model = TinySeg(net)
    data = tiny_dataset(16)
    a, w = split_indices(len(data), 0.5, seed=520)
    arch_stream = BatchStream(torch.utils.data.Subset(data, a), 4, seed=1)
    weight_stream = BatchStream(torch.utils.data.Subset(data, w), 4, seed=2)
    settings = dict(epochs=3, warmup_epochs=1, arch_steps=1, weight_steps=1, checkpoint_every=0, cost={"lambda": 0.1},
                    weight_optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 35.0},
                    arch_optim={"name": "adam", "lr": 0.05, "weight_decay": 1e-3, "betas": (0.5, 0.999), "grad_clip": 35.0},
                    weight_lr={"policy": "step", "milestones": [2], "warmup_iters": 2})
    settings.update(overrides)
    s = Searcher(model, net, ce_loss(model), arch_stream, weight_stream, madds_table(net),
                 SearchCfg.model_validate(settings), tmp_path, observer=observer, seed=1)
    return s


def test_weight_steps_change_no_alpha_and_arch_steps_change_no_weight(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = _searcher(tmp_path)
    s.model.train()
    alphas = [a.detach().clone() for a in s.alphas]
    weights = [p.detach().clone() for p in s.weights]
    s.weight_step(warmup=False)
    assert all(torch.equal(a, b) for a, b in zip(alphas, s.alphas))
    changed = sum(not torch.equal(a, b) for a, b in zip(weights, s.weights))
    assert changed > 0
    weights = [p.detach().clone() for p in s.weights]
    s.arch_step()
    assert all(torch.equal(a, b) for a, b in zip(weights, s.weights))
    assert all(not torch.equal(a, b) for a, b in zip(alphas, s.alphas))


def test_sampled_paths_follow_softmax_alpha() -> None:
    net = SuperNet(tiny_space())
    with torch.no_grad():
        for i, a in enumerate(net.alphas):
            a.copy_(torch.linspace(-1.0, 1.0, a.numel()) * (i + 1))
    g = torch.Generator().manual_seed(0)
    n = 4000
    counts = [torch.zeros(a.numel()) for a in net.alphas]
    for _ in range(n):
        for c, i in zip(counts, net.sample_path(g, temperature=0.9)):
            c[i] += 1
    for c, p in zip(counts, net.probabilities(0.9)):
        expected = n * p.detach()
        chi2 = float(((c - expected) ** 2 / expected).sum())
        # chi-square with k-1 <= 2 degrees of freedom: 13.8 is its 0.999 quantile
        assert chi2 < 13.8, (c, expected)
    uniform = [torch.zeros(a.numel()) for a in net.alphas]
    for _ in range(n):
        for c, i in zip(uniform, net.sample_path(g, uniform=True)):
            c[i] += 1
    for c in uniform:
        e = n / c.numel()
        assert float(((c - e) ** 2 / e).sum()) < 13.8


def test_expected_cost_and_its_gradient_match_a_hand_computation() -> None:
    table = MAddsTable((8, 8), [(1, 0), (1, 1)], [("a", "b"), ("a", "b", "skip")],
                       [[1_000_000_000, 3_000_000_000], [2_000_000_000, 4_000_000_000, 0]])
    a1 = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    a2 = torch.tensor([0.0, 0.5, -0.3], dtype=torch.float64, requires_grad=True)
    T, lam = 0.9, 0.15
    e = table.expected([a1, a2], T)
    p1 = [math.exp(v / T) for v in (0.2, -0.1)]
    p1 = [v / sum(p1) for v in p1]
    p2 = [math.exp(v / T) for v in (0.0, 0.5, -0.3)]
    p2 = [v / sum(p2) for v in p2]
    hand = p1[0] * 1 + p1[1] * 3 + p2[0] * 2 + p2[1] * 4
    assert float(e.detach()) == pytest.approx(hand, rel=1e-12)
    (lam * torch.log(e) / math.log(10)).backward()
    # d/d a_o of sum_o p_o c_o = p_o (c_o - E_layer) / T; chain through lambda * log10(E)
    scale = lam / (hand * math.log(10))
    g1 = [scale * p1[o] * (c - (p1[0] * 1 + p1[1] * 3)) / T for o, c in enumerate((1, 3))]
    g2 = [scale * p2[o] * (c - (p2[0] * 2 + p2[1] * 4)) / T for o, c in enumerate((2, 4, 0))]
    assert a1.grad.tolist() == pytest.approx(g1, rel=1e-10)
    assert a2.grad.tolist() == pytest.approx(g2, rel=1e-10)


def test_derive_takes_argmax_and_moves_skips_to_the_stage_end() -> None:
    space = tiny_space()
    net = SuperNet(space)
    # stage 1 layers 1,2 may skip; pick skip in the middle layer, an op in the last
    wanted = {(1, 0): "k5_e3", (1, 1): "skip", (1, 2): "k3_e6", (2, 1): "skip"}
    with torch.no_grad():
        for a, pos in zip(net.alphas, net.positions):
            names = space.candidates(*pos)
            a.zero_()
            a[names.index(wanted.get(pos, names[0]))] = 1.0
    arch = net.derive()
    assert arch.ops[1] == ("k5_e3", "k3_e6", "skip")
    assert arch.ops[2] == ("k3_e3", "skip")


def test_schedule_warmup_then_alternation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    kinds: list[tuple[int, str]] = []

    class Rec(SearchObserver):
        def on_step(self, info):  # type: ignore[no-untyped-def]
            kinds.append((info["epoch"], info["kind"]))

    s = _searcher(tmp_path, arch_steps=1, weight_steps=2, epochs=2, warmup_epochs=1, observer=Rec())
    s.run()
    per_epoch = s.steps_per_epoch
    assert per_epoch == 2  # 8 arch-split images / batch 4
    assert [k for e, k in kinds if e == 0] == ["weight"] * per_epoch
    assert [k for e, k in kinds if e == 1] == ["arch", "weight", "weight"]
    assert len(s.history) == 2 and (tmp_path / "arch.json").exists()


def test_lr_follows_the_step_schedule_with_warmup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lrs: list[float] = []

    class Rec(SearchObserver):
        def on_step(self, info):  # type: ignore[no-untyped-def]
            if info["kind"] == "weight":
                lrs.append(info["lr"])

    _searcher(tmp_path, epochs=3, warmup_epochs=3, observer=Rec()).run()
    base = 0.05
    assert lrs[0] == pytest.approx(base / 3)
    assert lrs[2:4] == pytest.approx([base, base])
    assert lrs[4:] == pytest.approx([base * 0.1] * 2)  # milestone at epoch 2 = weight iter 4


def test_interrupted_search_resumes_to_the_identical_alpha(tmp_path) -> None:  # type: ignore[no-untyped-def]
    full = _searcher(tmp_path / "full", seed=0)
    full.run()

    class Crash(SearchObserver):
        def on_step(self, info):  # type: ignore[no-untyped-def]
            if self.calls == 7:
                raise KeyboardInterrupt
            self.calls += 1
        calls = 0

    crashed = _searcher(tmp_path / "cut", seed=0, checkpoint_every=3, observer=Crash())
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    assert crashed.progress["step"] == 8  # died after step 8; the checkpoint holds step 6
    # a fresh process: other init, other global RNG state; everything must come from the checkpoint
    resumed = _searcher(tmp_path / "cut", seed=123, checkpoint_every=3)
    torch.manual_seed(999)
    result = resumed.run()
    assert result is not None
    for a, b in zip(full.alphas, resumed.alphas):
        assert torch.equal(a, b)
    for a, b in zip(full.weights, resumed.weights):
        assert torch.equal(a, b)
    assert [h["arch"] for h in full.history] == [h["arch"] for h in result.history]


def test_max_steps_pauses_and_a_second_call_finishes_identically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    full = _searcher(tmp_path / "full")
    full.run()
    s = _searcher(tmp_path / "steps")
    assert s.run(max_steps=5) is None
    again = _searcher(tmp_path / "steps", seed=5)
    again.run()
    assert all(torch.equal(a, b) for a, b in zip(full.alphas, again.alphas))


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = _searcher(tmp_path, checkpoint_every=2)
    good = s.loss_fn
    calls = {"n": 0}

    def flaky(batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = good(batch)
        return loss * float("nan") if calls["n"] == 5 else loss

    s.loss_fn = flaky
    with pytest.raises(NonFiniteLossError, match=r"step 4 .*last good checkpoint: .*checkpoint.pt"):
        s.run()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] == 4


def test_split_is_seeded_and_disjoint() -> None:
    a, b = split_indices(11, 0.5, seed=520)
    assert sorted(a + b) == list(range(11)) and not set(a) & set(b)
    assert (a, b) == split_indices(11, 0.5, seed=520)
    assert split_indices(11, 0.5, seed=1) != (a, b)


def test_batch_stream_resumes_mid_pass_with_identical_batches() -> None:
    data = tiny_dataset(10)
    s1 = BatchStream(data, 3, seed=4)
    seq = [s1.next()[0] for _ in range(7)]
    s2 = BatchStream(data, 3, seed=4)
    for _ in range(4):
        s2.next()
    state = s2.state_dict()
    s3 = BatchStream(data, 3, seed=4)
    s3.load_state_dict(state)
    assert all(torch.equal(a, s3.next()[0]) for a in seq[4:])


def test_cost_term_is_lambda_log_tau_of_gamma_times_cost(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """FNA_SPEC §13.1: L = L_task + lambda * log_tau(gamma * E[cost]), checked on a real arch step by hand."""
    lam, tau, gamma = 9e-3, 45.0, 10.0
    s = _searcher(tmp_path, cost={"lambda": lam, "log_base": tau, "gamma": gamma})
    out = s.arch_step()
    hand = lam * math.log(gamma * out["expected_cost"]) / math.log(tau)
    assert out["arch_loss"] - out["arch_task_loss"] == pytest.approx(hand, rel=1e-5)
    assert float(cost_term(torch.tensor(2.5, dtype=torch.float64), CostCfg(gamma=10, log_base=45))) == pytest.approx(
        math.log(25) / math.log(45), rel=1e-12)


def test_gamma_shifts_the_loss_but_not_the_search(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """log(gamma * C) = log(gamma) + log(C): gamma adds a constant, so alpha's gradients and the search are those
    of gamma = 1 (what the detection recipes use); only the logged arch loss moves by lambda * log_tau(gamma)."""
    runs = []
    for gamma in (1.0, 10.0):
        s = _searcher(tmp_path / str(gamma), cost={"lambda": 0.5, "log_base": 45, "gamma": gamma})
        out = s.arch_step()
        runs.append((out, [a.detach().clone() for a in s.alphas]))
    (o1, a1), (o10, a10) = runs
    assert o10["arch_loss"] - o1["arch_loss"] == pytest.approx(0.5 * math.log(10) / math.log(45), rel=1e-5)
    assert all(torch.equal(x, y) for x, y in zip(a1, a10))


def test_warmup_in_epochs_and_a_floor_for_the_cosine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The ICLR seg recipe: warm-up 1e-4 -> 0.02 over 5 epochs, then cosine down to 1e-3."""
    s = _searcher(tmp_path, epochs=10, warmup_epochs=4, steps_per_epoch=3, weight_optim={"lr": 0.02},
                  weight_lr={"policy": "cosine", "warmup_epochs": 5, "warmup_ratio": 0.005, "min_lr": 1e-3})
    sched = s.schedule
    assert sched.warmup_iters == 15 and sched.min_lr == 1e-3
    assert sched.lr_at(0) == pytest.approx(1e-4)
    assert sched.lr_at(29) == pytest.approx(1e-3 + 0.5 * (0.02 - 1e-3) * (1 + math.cos(math.pi * 29 / 30)), rel=1e-12)


def test_recomputing_arch_steps_search_the_same_alphas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """search.recompute_mixed reaches the super net, and a search that recomputes every mixed layer (or the
    default's share) ends with the alphas and weights of one that keeps all activations, within float noise."""
    ends = {}
    for share in (0.0, 0.7, 1.0):
        s = _searcher(tmp_path / str(share), recompute_mixed=share)
        assert s.supernet.recompute_mixed == share
        s.run()
        ends[share] = [p.detach().clone() for p in s.model.parameters()]
    for share in (0.7, 1.0):
        for a, b in zip(ends[0.0], ends[share]):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        SearchCfg.model_validate({"recompute_mixed": 1.5})


def test_each_arch_step_measures_which_term_moves_alpha(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The task's and the cost term's gradients on alpha, separately: with lambda 0 the cost term contributes
    nothing, with a huge lambda nearly everything; the two add up to the gradient the step applies."""
    s = _searcher(tmp_path / "a")
    s.model.train()
    out = s.arch_step()
    assert out["alpha_grad_cost"] > 0 and out["alpha_grad_task"] > 0
    s0 = _searcher(tmp_path / "b", cost={"lambda": 0.0})
    s0.model.train()
    assert s0.arch_step()["alpha_grad_cost"] == 0.0
    big = _searcher(tmp_path / "c", cost={"lambda": 1e4})
    big.model.train()
    out = big.arch_step()
    assert out["alpha_grad_cost"] / (out["alpha_grad_cost"] + out["alpha_grad_task"]) > 0.99
    # the decomposition is the applied gradient's: task + cost from a fresh step equals alpha's whole gradient
    t = _searcher(tmp_path / "d")
    t.model.train()
    t._require(weights=False)
    t.supernet.use_mixed(t.s.temperature)
    loss = t.loss_fn(t.arch_stream.next()) + t.s.cost.lam * t.cost_term(t.cost.expected(t.alphas, t.s.temperature))
    total = torch.autograd.grad(loss, t.alphas)
    norm = math.sqrt(sum(float(g.square().sum()) for g in total))
    t2 = _searcher(tmp_path / "e")
    t2.model.train()
    out = t2.arch_step()
    assert norm <= out["alpha_grad_task"] + out["alpha_grad_cost"] + 1e-9  # the triangle inequality
    assert norm >= abs(out["alpha_grad_task"] - out["alpha_grad_cost"]) - 1e-9


def test_the_epoch_reports_the_cost_terms_share_of_alphas_gradient(tmp_path) -> None:  # type: ignore[no-untyped-def]
    epochs: list[dict] = []

    class Obs(SearchObserver):
        def on_epoch(self, epoch, metrics, probabilities, arch):  # type: ignore[no-untyped-def]
            epochs.append(metrics)

    _searcher(tmp_path / "a", observer=Obs(), cost={"lambda": 1e4}).run()
    assert "cost_grad_share" not in epochs[0]  # warm-up: no arch step
    assert all(m["cost_grad_share"] > 0.99 for m in epochs[1:])
    epochs.clear()
    _searcher(tmp_path / "b", observer=Obs(), cost={"lambda": 0.0}).run()
    assert all(m["cost_grad_share"] == 0.0 for m in epochs[1:])
