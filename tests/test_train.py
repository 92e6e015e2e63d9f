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


def _fail_writes_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> list[int]:
    """From the ``calls``-th checkpoint write on, the device is full: ``os.fsync`` of the temporary file raises
    ENOSPC, as a full disk does when the data reaches it."""
    import errno

    from fnatune import io

    seen = [0]
    real = io.os.fsync

    def fsync(fd: int) -> None:
        seen[0] += 1
        if seen[0] >= calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    return seen


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fnatune.errors import DiskFullError

    full = _trainer(tmp_path / "full")
    full.run()
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        _fail_writes_after(m, 2)  # the checkpoint at iteration 4 is written, the one at 8 finds the disk full
        with pytest.raises(DiskFullError, match=r"^no space left on the device writing .*cut/checkpoint\.pt \(the "
                                                r"last good checkpoint\.pt is kept\); free space there, then resume"):
            _trainer(cut).run()
    assert sorted(p.name for p in cut.iterdir()) == ["checkpoint.pt"]  # no temporary file left behind
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["it"] == 4
    resumed = _trainer(cut, seed=77)  # space freed: the run continues from iteration 4
    resumed.run()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_and_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = _trainer(tmp_path / "full")
    full.run()

    class Kill(TrainObserver):
        def on_step(self, info):  # type: ignore[no-untyped-def]
            if info["it"] == 9:
                raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _trainer(cut, observer=Kill()).run()
    newest, previous = cut / "checkpoint.pt", cut / "checkpoint.prev.pt"
    assert torch.load(newest, weights_only=True)["it"] == 8 and torch.load(previous, weights_only=True)["it"] == 4
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy cut short
    resumed = _trainer(cut, seed=77)
    resumed.run()
    err = capsys.readouterr().err
    assert f"{newest} is damaged (" in err and "continuing from the previous checkpoint, checkpoint.prev.pt" in err
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)  # iterations 4..8 ran again, to the same weights
    resumed.ckpt.remove()  # what the stage does once the loop is complete
    assert not previous.exists() and not newest.exists()


def test_two_damaged_checkpoints_are_one_clear_error_naming_both(tmp_path: Path) -> None:
    from fnatune.errors import FnatuneError
    from fnatune.loop import LoopCheckpoint

    ck = LoopCheckpoint(tmp_path, "fmt")
    ck.save(full=lambda: {"it": 1}, own=dict)
    ck.save(full=lambda: {"it": 2}, own=dict)
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut")
    assert ck.load()[0]["it"] == 1
    (tmp_path / "checkpoint.prev.pt").write_text("")
    with pytest.raises(FnatuneError, match=r"checkpoint\.pt is damaged \(.*\) and so is the earlier "
                                            r"checkpoint\.prev\.pt \(.*\); delete both to start this stage over"):
        ck.load()
