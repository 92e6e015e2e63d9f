"""The fine-tune loop: LR schedule, an exact resume, NaN handling; ONNX export checked by onnxruntime."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fnatune.config import TrainLoopCfg
from fnatune.data import BatchStream
from fnatune.loop import NonFiniteLossError
from fnatune.schedule import LRSchedule
from fnatune.train import Trainer, TrainObserver
from tests.helpers import TinySeg, ce_loss, tiny_dataset, tiny_space


def _trainer(workdir: Path, seed: int = 0, observer=None) -> Trainer:  # type: ignore[no-untyped-def]
    from fnatune.nets import ChildNet, SuperNet

    torch.manual_seed(seed)
    sup = SuperNet(tiny_space())
    model = TinySeg(sup)
    model.backbone = ChildNet(tiny_space().sample(0))  # type: ignore[assignment]
    s = TrainLoopCfg(iters=10, optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                                      "grad_clip": None},
                     policy="poly", warmup_iters=2, log_every=3, checkpoint_every=4)
    return Trainer(model, ce_loss(model), BatchStream(tiny_dataset(12), 4, seed=3), s, workdir, observer)


def test_poly_and_step_schedules() -> None:
    poly = LRSchedule(0.01, 100, "poly", power=0.9, warmup_iters=10, warmup_ratio=0.1)
    assert poly.lr_at(0) == pytest.approx(0.01 * 0.1)
    assert poly.lr_at(50) == pytest.approx(0.01 * 0.5 ** 0.9)
    step = LRSchedule(0.02, 100, "step", milestones=[8, 11])
    assert [step.lr_at(i) for i in (7, 8, 11)] == pytest.approx([0.02, 0.002, 0.0002])


def test_killed_training_resumes_to_identical_weights(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full")
    full.run()

    class Kill(TrainObserver):
        def on_step(self, info):  # type: ignore[no-untyped-def]
            if info["it"] == 6:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "cut", observer=Kill()).run()
    resumed = _trainer(tmp_path / "cut", seed=77)
    resumed.run()
    assert resumed.it == 10
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [e["it"] for e in resumed.log] == [3, 6, 9, 10]


def test_nan_loss_names_the_iteration(tmp_path: Path) -> None:
    t = _trainer(tmp_path)
    good = t.loss_fn
    t.loss_fn = lambda b: good(b) * (float("nan") if t.it == 5 else 1.0)
    with pytest.raises(NonFiniteLossError, match=r"iteration 5; .*last good checkpoint: .*checkpoint.pt"):
        t.run()


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    from fnatune.export import export_onnx
    from fnatune.nets import ChildNet

    net = ChildNet(tiny_space().sample(1)).eval()
    info = export_onnx(net, tmp_path / "b.onnx", (32, 32))
    assert info["onnxruntime_max_abs_diff"] < 1e-4 and info["outputs"] == [[1, 16, 4, 4]]
