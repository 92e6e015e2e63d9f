"""Segmentation with mmseg: our modules in mmseg's registry, Cityscapes-format data through mmseg's
dataset class, mIoU from mmseg's metric, and the tiny pipeline end to end (run, resume, bad input)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fnatune.mm import available

if not available("mmseg"):
    pytest.skip("OpenMMLab (mmseg + compiled mmcv) is not installed", allow_module_level=True)

from fnatune.cli import main
from fnatune.data.synthetic import generate_cityscapes
from fnatune.mm import seg as mmseg_adapter
from search_spaces import ARCHS_DIR

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def test_generated_set_is_read_back_by_mmseg_cityscapes_dataset(tmp_path: Path) -> None:
    root = generate_cityscapes(tmp_path / "cs", 4, 2, (64, 128), seed=1)
    ds = mmseg_adapter.cityscapes(root, "train", mmseg_adapter.plain_pipeline())
    assert len(ds) == 4 and len(ds.metainfo["classes"]) == 19
    sample = ds[0]
    label = sample["data_samples"].gt_sem_seg.data[0].numpy()
    name = Path(sample["data_samples"].seg_map_path)
    assert name.name.endswith("_gtFine_labelTrainIds.png")
    assert np.array_equal(label, np.asarray(Image.open(name)))
    assert sample["inputs"].shape == (3, 64, 128)


def _sample(pred: np.ndarray, gt: np.ndarray) -> dict:  # type: ignore[type-arg]
    return {"pred_sem_seg": {"data": torch.from_numpy(pred)[None]}, "gt_sem_seg": {"data": torch.from_numpy(gt)[None]}}


def test_miou_on_hand_made_cases() -> None:
    from mmseg.evaluation import IoUMetric

    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    def miou(pred: np.ndarray) -> float:
        m = IoUMetric(iou_metrics=["mIoU"])
        m.dataset_meta = {"classes": ("a", "b", "c")}
        m.process({}, [_sample(pred, gt)])
        return m.compute_metrics(m.results)["mIoU"]

    assert miou(gt.clip(max=1)) == 100.0                       # perfect (ignore pixel ignored)
    # one class-0 pixel predicted as 1 (the last pixel is ignored): class 0 I=3 U=4, class 1 I=3 U=4
    pred = np.array([[0, 0, 1, 1], [0, 1, 1, 0]])
    assert miou(pred) == pytest.approx(100 * (3 / 4 + 3 / 4) / 2, abs=0.01)
    # predicting an absent class counts: class 0 I=3 U=4, class 1 I=3 U=3, class 2 I=0 U=1
    pred2 = np.array([[0, 0, 1, 1], [0, 2, 1, 0]])
    assert miou(pred2) == pytest.approx(100 * (3 / 4 + 1 + 0) / 3, abs=0.01)


def test_head_matches_the_plain_torch_network_and_a_plain_config_builds() -> None:
    from fnatune.arch import Arch
    from fnatune.cost import count_params
    from fnatune.whole_network import whole_network

    arch = Arch.load(ARCHS_DIR / "fna_seg.json")
    cfg = mmseg_adapter.model_config(dict(type="FNABackbone", arch=str(ARCHS_DIR / "fna_seg.json")), 320, 19,
                                     MEAN, STD, (64, 64))
    model = mmseg_adapter.build_model(cfg)
    assert count_params(model) == count_params(whole_network("seg", arch, num_classes=19)[0])
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert model(x, mode="tensor").shape == (1, 19, 4, 4)


def test_super_backbone_follows_the_searcher_modes() -> None:
    cfg = mmseg_adapter.model_config(dict(type="FNASuperBackbone", space="mbv2_seg"), 320, 19, MEAN, STD, (64, 64))
    model = mmseg_adapter.build_model(cfg).eval()
    net = model.backbone.net
    x = torch.randn(1, 3, 64, 64)
    path = net.space.indices_of(net.space.sample(3))
    with torch.no_grad():
        net.use_path(path)
        single = model(x, mode="tensor")
        assert torch.equal(net(x, indices=path)[-1], model.backbone(x)[-1])
        net.use_mixed(1.0)
        mixed = model(x, mode="tensor")
    assert not torch.equal(single, mixed)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_pipeline_runs_on_the_mm_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same pipeline as tests/test_seg_pipeline.py, through mmseg: the search moves alpha, the metric is logged."""
    from tests.test_seg_pipeline import TINY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/mm/tiny_seg.yaml"), "--run-dir", "run", *TINY,
                                    "--set", "tracking.enabled=false"])
    assert res.exit_code == 0, res.output
    assert "results: run" in res.output and "mIoU" in res.output
    run = tmp_path / "run"
    assert "backend: mm" in (run / "config.yaml").read_text()
    metrics = json.loads((run / "stages/evaluate/done.json").read_text())["metrics"]
    assert set(metrics) >= {"mIoU", "mAcc", "aAcc"}
    state = torch.load(run / "stages/finetune/model.pt", weights_only=True)
    assert any(k.startswith("decode_head.aspp.") for k in state)  # mmseg's EncoderDecoder, not the torchvision model
