"""Segmentation with mmseg: our modules in mmseg's registry, Cityscapes-format data through mmseg's
dataset class, mIoU from mmseg's metric, and the tiny pipeline end to end (run, resume, bad input)."""
from __future__ import annotations

import json
import os
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


TINY = ["--set", "pretrain.iters=20", "--set", "pretrain.per_class_train=8", "--set", "pretrain.per_class_val=2",
        "--set", "data.generate.num_train=8", "--set", "data.generate.num_val=2",
        "--set", "data.generate.size=[64, 128]", "--set", "search.epochs=2", "--set", "search.warmup_epochs=1",
        "--set", "search.augment.crop=[64, 64]", "--set", "finetune.iters=6", "--set", "finetune.log_every=3",
        "--set", "finetune.augment.crop=[64, 64]", "--set", "export.input=[64, 128]"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_pipeline_runs_tracks_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(ROOT / "pipelines/tiny/seg.yaml"), "--run-dir", "run", *TINY])
    assert res.exit_code == 0, res.output
    assert "results: run" in res.output and "mIoU" in res.output
    run = tmp_path / "run"
    arch = json.loads((run / "arch.json").read_text())
    assert arch and (run / "stages/export/backbone.onnx").exists()
    assert (run / "stages/search/alpha_heatmap.png").exists()
    done = json.loads((run / "stages/export/done.json").read_text())
    assert done["metrics"]["onnxruntime_max_abs_diff"] < 1e-3

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = json.loads((run / "run.json").read_text())
    runs = client.search_runs([client.get_experiment_by_name("fnatune").experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["parent_run"]}
    assert set(children) == {"data", "seed", "supernet", "search", "target", "finetune", "evaluate", "export"}
    search = children["search"]
    hist = client.get_metric_history(search.info.run_id, "alpha_entropy")
    assert [m.step for m in hist] == [0, 1]
    assert "wall_clock_hours" in search.data.metrics
    assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {"arch.json", "alpha_heatmap.png", "alpha"}
    parent = client.get_run(state["parent_run"])
    assert parent.data.params["search.epochs"] == "2" and "mIoU" in parent.data.metrics
    # the runs table's columns: the derived arch, its cost beside the seed's, time per stage with units
    from fnatune.arch import Arch

    assert parent.data.tags["arch"] == Arch.load(run / "arch.json").block_string()
    assert parent.data.metrics["cost_GMAdds"] == round(done["metrics"]["madds_paper_resolution"] / 1e9, 4)
    assert parent.data.metrics["seed_cost_GMAdds"] == round(done["metrics"]["seed_madds_paper_resolution"] / 1e9, 4)
    assert {"params_M", "seed_params_M", "time_search_s", "time_finetune_s"} <= set(parent.data.metrics)
    assert "arch:" in res.output and "the seed's own arch:" in res.output and "time per stage:" in res.output

    # the same config in another run directory, with another seed cache (so the seed is pretrained again
    # from a different global RNG state), gives bit-identical results: every init is seeded
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache2"))
    res = runner.invoke(main, ["run", str(ROOT / "pipelines/tiny/seg.yaml"), "--run-dir", "again", *TINY,
                               "--set", "tracking.enabled=false"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "again/arch.json").read_text()) == arch
    a = torch.load(run / "stages/finetune/model.pt", weights_only=True)
    b = torch.load(tmp_path / "again/stages/finetune/model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a completed stage is skipped on resume; an incomplete one runs again
    (run / "stages/export/done.json").unlink()
    res = runner.invoke(main, ["resume", "run"])
    assert res.exit_code == 0, res.output
    for i, name in enumerate(["data", "seed", "supernet", "search", "target", "finetune", "evaluate"]):
        assert f"[{i + 1}/8] {name}: complete, skipped" in res.output
    assert "[8/8] export: done" in res.output
    res = runner.invoke(main, ["run", str(ROOT / "pipelines/tiny/seg.yaml"), "--run-dir", "run"])
    assert res.exit_code == 2 and "fnatune resume run" in res.output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_missing_dataset_points_to_the_tiny_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/seg.yaml"), "--run-dir", "r",
                                    "--set", "tracking.enabled=false", "--set", "seed_net.weights=null",
                                    "--set", "device=cpu"])
    assert res.exit_code == 2
    assert "dataset not found at data/cityscapes" in res.output and "pipelines/tiny/seg.yaml" in res.output


def test_unknown_yaml_key_is_reported_by_the_cli(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(f"_base_: {ROOT / 'pipelines/tiny/seg.yaml'}\nsearch: {{epoch: 3}}\n")
    res = CliRunner().invoke(main, ["run", str(p), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "search.epoch: unknown key" in res.output
    assert not os.path.exists(tmp_path / "r")
