"""MLflow through our adapter: SQLite store, nested runs, params, metrics, artifacts."""
from __future__ import annotations

from pathlib import Path

from fnatune.tracking import (
    RESULTS_VIEW,
    MlflowTracker,
    NullTracker,
    decode_view_state,
    default_tracking_uri,
    encode_view_state,
    experiment_page,
    results_pages,
    run_page,
    runs_table_page,
    ui_command,
    view_columns,
)


def test_nested_runs_with_params_metrics_and_artifacts(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri.startswith("sqlite:///") and uri.endswith("mlflow.db")
    t = MlflowTracker(uri, "exp")
    parent = t.start_run("pipeline")
    child = t.start_run("search", parent_id=parent)
    t.log_params(child, {"a": 1, "long": "x" * 10_000})
    t.log_metrics(child, {"loss": 0.5, "nan": float("nan")}, step=3)
    art = tmp_path / "arch.json"
    art.write_text("{}")
    t.log_artifact(child, art)
    t.end_run(child)
    t.end_run(parent)
    run = t.client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["a"] == "1" and len(run.data.params["long"]) == 6000
    assert run.data.metrics == {"loss": 0.5}
    assert [a.path for a in t.client.list_artifacts(child)] == ["arch.json"]
    assert (tmp_path / "mlartifacts").is_dir()  # beside the store, not in whatever cwd
    assert t.run_exists(parent) and not t.run_exists("0" * 32)


def test_null_tracker_and_ui_binds_localhost(tmp_path: Path) -> None:
    n = NullTracker()
    rid = n.start_run("x")
    n.log_metrics(rid, {"a": 1.0})
    cmd = ui_command(default_tracking_uri(tmp_path))
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--backend-store-uri" in cmd


def test_only_a_missing_run_is_reported_missing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A passing store failure must not look like "this run does not exist": a resumed run would then start a
    new MLflow run and fork its history. It raises a retriable error instead."""
    import pytest
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from fnatune.errors import FnatuneError
    from fnatune.tracking import TrackingUnavailable

    t = MlflowTracker(default_tracking_uri(tmp_path), "exp")
    run = t.start_run("x")
    assert t.run_exists(run) and not t.run_exists("f" * 32)

    def unavailable(run_id: str) -> None:
        raise MlflowException("API request failed: 503 Service Unavailable", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(t.client, "get_run", unavailable)
    with pytest.raises(TrackingUnavailable, match=r"could not tell whether run .* exists \(TEMPORARILY_UNAVAILABLE"):
        t.run_exists(run)
    assert not issubclass(TrackingUnavailable, FnatuneError)  # so a Tune trial that hits it is retried

    def unreachable(run_id: str) -> None:
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(t.client, "get_run", unreachable)
    with pytest.raises(TrackingUnavailable, match="ConnectionError: Connection refused"):
        t.run_exists(run)


def test_our_experiments_keep_the_model_training_kind_tag(tmp_path: Path) -> None:
    """Kept for MLflow versions that read ``mlflow.experimentKind``: new experiments get it when created,
    older ones (made before this tag) when next opened."""
    uri = default_tracking_uri(tmp_path)
    t = MlflowTracker(uri, "new")
    assert t.client.get_experiment(t.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old = t.client.create_experiment("old")
    assert "mlflow.experimentKind" not in t.client.get_experiment(old).tags
    MlflowTracker(uri, "old")
    assert t.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def _view(t: MlflowTracker) -> tuple[dict, dict]:  # type: ignore[type-arg]
    import json

    saved = json.loads(t.client.get_experiment(t.experiment_id).tags[f"mlflow.sharedViewState.{RESULTS_VIEW}"])
    return saved, decode_view_state(saved["state"])


def test_the_results_view_is_a_saved_runs_table_view_with_our_columns(tmp_path: Path) -> None:
    """MLflow 3.17's UI opens a shared view from the experiment tag ``mlflow.sharedViewState.<key>`` whose
    state is zlib-compressed JSON; its ``selectedColumns`` are the runs table's extra columns."""
    import base64
    import json
    import zlib

    t = MlflowTracker(default_tracking_uri(tmp_path), "exp")
    t.show_columns(view_columns(["mIoU", "cost_GMAdds"], tags=["arch"]))
    saved, state = _view(t)
    assert saved["name"] and saved["state"].startswith("deflate;")
    assert json.loads(zlib.decompress(base64.b64decode(saved["state"][len("deflate;"):]))) == state
    assert state["selectedColumns"] == ["metrics.`mIoU`", "metrics.`cost_GMAdds`", "tags.`arch`"]
    assert state["orderByKey"] == "attributes.start_time" and state["orderByAsc"] is False
    assert state["columnOrder"] == ["attributes.`Run Name`", *state["selectedColumns"]]
    assert state["columnWidths"] == {"attributes.`Run Name`": 250, "tags.`arch`": 500}

    # a user's edits saved over the view stay; runs of another task only add their metric
    state["selectedColumns"] = ["tags.`arch`", "metrics.`mIoU`"]
    state["columnOrder"] = ["tags.`arch`", "attributes.`Run Name`", "metrics.`mIoU`"]
    state["columnWidths"] = {"tags.`arch`": 90}
    state["searchFilter"] = "metrics.mIoU > 50"
    saved["state"] = encode_view_state(state)
    t.client.set_experiment_tag(t.experiment_id, f"mlflow.sharedViewState.{RESULTS_VIEW}", json.dumps(saved))
    t.show_columns(view_columns(["bbox_mAP", "mIoU"]))
    _, after = _view(t)
    assert after["selectedColumns"] == ["tags.`arch`", "metrics.`mIoU`", "metrics.`bbox_mAP`"]
    assert after["columnOrder"] == ["tags.`arch`", "attributes.`Run Name`", "metrics.`mIoU`", "metrics.`bbox_mAP`"]
    assert after["columnWidths"] == {"tags.`arch`": 90, "attributes.`Run Name`": 250}
    assert after["searchFilter"] == "metrics.mIoU > 50"

    # an unreadable view is replaced, not a reason to stop a run
    t.client.set_experiment_tag(t.experiment_id, f"mlflow.sharedViewState.{RESULTS_VIEW}", "{not json")
    t.show_columns(view_columns(["mIoU"]))
    assert _view(t)[1]["selectedColumns"] == ["metrics.`mIoU`"]


def test_links_open_the_runs_table_in_model_training_mode(tmp_path: Path) -> None:
    """3.17's UI ignores ``mlflow.experimentKind`` and lands on GenAI traces unless the URL names the mode."""
    uri = default_tracking_uri(tmp_path)
    t = MlflowTracker(uri, "exp")
    MlflowTracker(uri, "other")  # no view: not one of the pages ``fnatune ui`` lists
    run = t.start_run("r")
    e = t.experiment_id
    assert run_page(uri, run) == f"http://127.0.0.1:5000/#/experiments/{e}/runs/{run}?workflowType=machine_learning"
    assert runs_table_page(uri, run, "http://h:1") == (
        f"http://h:1/#/experiments/{e}/runs?viewStateShareKey={RESULTS_VIEW}&workflowType=machine_learning")
    assert run_page(uri, "0" * 32) is None and runs_table_page(uri, "0" * 32) is None
    assert results_pages(uri) == []
    t.show_columns(view_columns(["mIoU"]))
    assert results_pages(uri) == [("exp", experiment_page(e))]
