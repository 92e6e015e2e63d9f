"""BN recalibration (FNA_SPEC §13.2): running statistics recomputed, nothing else touched, once per run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fnatune.bn import recalibrate_bn
from fnatune.config.sections import TrainLoopCfg
from fnatune.data import BatchStream
from fnatune.train import Trainer, TrainObserver


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                        nn.BatchNorm2d(2, momentum=0.3))
    with torch.no_grad():  # stale statistics, as a remapped seed's are for its new network
        for bn in (net[1], net[4]):
            bn.running_mean.fill_(5.0)
            bn.running_var.fill_(9.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net.eval()


def test_recalibration_recomputes_running_statistics_and_changes_nothing_else() -> None:
    net = _net()
    batches = [torch.randn(4, 3, 6, 6) * 2 + 1 for _ in range(3)]
    params = {k: v.clone() for k, v in net.named_parameters()}
    it = iter(batches)
    assert recalibrate_bn(net, lambda: net(next(it)), 3) == 2
    assert all(torch.equal(v, params[k]) for k, v in net.named_parameters())
    assert all(p.grad is None for p in net.parameters())
    assert not net.training and net[4].momentum == 0.3 and net[1].momentum == 0.1
    # the first BN sees the conv's outputs: its statistics are the plain average of the three batches'
    conv = [net[0](x).detach() for x in batches]
    mean = torch.stack([c.mean((0, 2, 3)) for c in conv]).mean(0)
    var = torch.stack([c.transpose(0, 1).reshape(4, -1).var(1, unbiased=True) for c in conv]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert int(net[1].num_batches_tracked) == 3 and int(net[4].num_batches_tracked) == 3


def test_zero_iterations_leave_the_statistics_alone() -> None:
    net = _net()
    recalibrate_bn(net, lambda: pytest.fail("no batch should be drawn"), 0)
    assert float(net[1].running_mean[0]) == 5.0


def test_the_trainer_recalibrates_once_before_its_first_step_and_not_on_resume(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 6, 6), torch.randint(0, 2, (16,)))
    seen: list[dict] = []

    class Obs(TrainObserver):
        def on_recalibrated(self, info: dict) -> None:
            seen.append(info)

    def trainer(iters: int) -> tuple[Trainer, nn.Module]:
        net = _net()
        loss = lambda b: nn.functional.cross_entropy(net(b[0]).mean((2, 3)), b[1])
        cfg = TrainLoopCfg(iters=iters, bn_recalibration_iters=3, warmup_iters=0, checkpoint_every=2, log_every=1)
        return Trainer(net, loss, BatchStream(data, 4, seed=1), cfg, tmp_path, Obs()), net

    t, net = trainer(2)
    t.run(max_steps=0)  # recalibrated, checkpointed, no step yet
    assert len(seen) == 1 and seen[0]["iters"] == 3 and seen[0]["bn_layers"] == 2
    assert t.it == 0 and float(net[1].running_mean[0]) != 5.0
    t2, _ = trainer(2)
    t2.run()
    assert len(seen) == 1 and t2.it == 2  # resumed from the checkpoint: the statistics are not recomputed again
