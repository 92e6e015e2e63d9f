"""The tiny pose pipeline end to end, smaller than the demo (a shorter seed pretrain, half the images, a 2-epoch
search and 160 fine-tune iterations; ~70 s): every stage runs as a Ray Tune trial, the AP is COCO's OKS AP from
pycocotools with flip test, MLflow holds the parent run and one child per stage, and the export is checked by
onnxruntime. Pose needs no OpenMMLab, so this runs without the mm extra."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fnatune.arch import Arch
from fnatune.cli import main

ROOT = Path(__file__).resolve().parents[1]

SMALLER = ["pretrain.iters=150", "pretrain.per_class_train=24", "data.generate.num_train=24", "search.epochs=2",
           "search.warmup_epochs=1", "finetune.iters=160", "finetune.milestones=[120]"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_pose_pipeline_runs_end_to_end_and_logs_its_ap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    sets = [a for s in SMALLER for a in ("--set", s)]
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/tiny/pose.yaml"), "--run-dir", "run", *sets])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    assert (tmp_path / "data/synthetic_coco_keypoints/annotations/person_keypoints_val2017.json").exists()
    arch = json.loads((run / "arch.json").read_text())
    assert arch["space"] == "mbv2_pose"
    metrics = json.loads((run / "stages/evaluate/metrics.json").read_text())
    # this run: 53.1 AP (the demo as shipped: 67.8); an untrained or mis-decoded model scores ~0
    assert metrics["AP"] > 20.0 and metrics["AR"] >= metrics["AP"] - 10, metrics
    export = json.loads((run / "stages/export/done.json").read_text())["metrics"]
    assert export["onnxruntime_max_abs_diff"] < 1e-3 and export["params"] > export["backbone_params"]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = json.loads((run / "run.json").read_text())
    parent = client.get_run(state["parent_run"])
    assert f"#/experiments/{parent.info.experiment_id}/runs/{state['parent_run']}" in res.output  # the run's page
    assert parent.data.params["task"] == "pose" and parent.data.params["pose.input_size"] == "[128, 96]"
    assert parent.data.metrics["AP"] == round(metrics["AP"], 4)  # as the runs table shows it
    # the runs table's columns: size and cost beside the seed's own layout's, the arch, seconds per stage
    assert parent.data.metrics["params_M"] == round(export["params"] / 1e6, 4)
    assert parent.data.metrics["seed_params_M"] == round(export["seed_params"] / 1e6, 4)
    assert parent.data.metrics["seed_cost_GMAdds"] == round(export["seed_madds_paper_resolution"] / 1e9, 4)
    assert parent.data.metrics["cost_GMAdds"] == round(export["madds_paper_resolution"] / 1e9, 4)
    assert parent.data.tags["arch"] == Arch.from_dict(arch).block_string()
    assert not {"madds_G", "seed_madds_G"} & set(parent.data.metrics)  # one name per figure
    assert all(parent.data.metrics[f"time_{s}_s"] > 0 for s in ("seed", "search", "finetune"))
    # ... and the experiment's saved view that the printed "all runs:" link opens shows them
    from fnatune.tracking import RESULTS_VIEW, decode_view_state

    saved = json.loads(client.get_experiment(parent.info.experiment_id).tags[f"mlflow.sharedViewState.{RESULTS_VIEW}"])
    columns = decode_view_state(saved["state"])["selectedColumns"]
    assert columns[:2] == ["metrics.`AP`", "metrics.`cost_GMAdds`"] and "tags.`arch`" in columns
    assert f"viewStateShareKey={RESULTS_VIEW}&workflowType=machine_learning" in res.output
    runs = client.search_runs([parent.info.experiment_id])
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == state["parent_run"]}
    assert children == {"data", "seed", "supernet", "search", "target", "finetune", "evaluate", "export"}
