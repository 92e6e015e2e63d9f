"""The tiny segmentation pipeline end to end on the default (torchvision) backend: it runs, tracks every stage in
MLflow, gives bit-identical results from the same config, resumes after its last complete stage, and refuses a
missing dataset (seg and det) or an unknown key with one line. `tests/mm/test_seg.py` runs it on the mm backend."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fnatune.cli import main

ROOT = Path(__file__).resolve().parents[1]


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
    # the search's options beyond FNA (issue 27) ride along: an annealed temperature and the scored derivation
    options = ["--set", "search.warmup_epochs=0", "--set", "search.temperature_final=0.5",
               "--set", "search.derive.method=paths", "--set", "search.derive.top_k=3", "--set", "search.derive.batches=1"]
    res = runner.invoke(main, ["run", str(ROOT / "pipelines/tiny/seg.yaml"), "--run-dir", "run", *TINY, *options])
    assert res.exit_code == 0, res.output
    assert "results: run" in res.output and "mIoU" in res.output
    assert "derived by scoring 3 likely paths on the arch split" in res.output
    derived = json.loads((tmp_path / "run/stages/search/derive.json").read_text())
    assert derived["method"] == "paths" and len(derived["scored"]) == 3
    assert derived["arch"] == derived["scored"][0]["arch"]
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
    assert [m.value for m in client.get_metric_history(search.info.run_id, "temperature")] == [1.0, 0.5]
    assert "wall_clock_hours" in search.data.metrics
    assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {"arch.json", "alpha_heatmap.png", "alpha",
                                                                           "derive.json"}
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
    res = runner.invoke(main, ["run", str(ROOT / "pipelines/tiny/seg.yaml"), "--run-dir", "again", *TINY, *options,
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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_det_pipeline_without_coco_names_the_layout_and_the_tiny_pipeline(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/det.yaml"), "--run-dir", "r",
                                    "--set", "tracking.enabled=false", "--set", "seed_net.weights=null",
                                    "--set", "device=cpu"])
    assert res.exit_code == 2
    assert "dataset not found at data/coco" in res.output
    assert "annotations/instances_train2017.json" in res.output and "pipelines/tiny/det.yaml" in res.output
