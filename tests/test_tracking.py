"""MLflow through our adapter: SQLite store, nested runs, params, metrics, artifacts."""
from __future__ import annotations

from pathlib import Path

from fnatune.tracking import (
    MlflowTracker,
    NullTracker,
    default_tracking_uri,
    ui_command,
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


def test_our_experiments_open_on_their_runs_in_mlflows_ui(tmp_path: Path) -> None:
    """MLflow 3's UI shows an experiment without a kind as GenAI traces; ours are tagged as model training,
    new ones when created, older ones (made before this tag) when next opened."""
    uri = default_tracking_uri(tmp_path)
    t = MlflowTracker(uri, "new")
    assert t.client.get_experiment(t.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old = t.client.create_experiment("old")
    assert "mlflow.experimentKind" not in t.client.get_experiment(old).tags
    MlflowTracker(uri, "old")
    assert t.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
