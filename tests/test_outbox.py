"""Tracking that a store outage cannot fail: records wait in the run directory's outbox and reach the store, in
order, when it answers again (or through `fnatune sync`); nothing is lost, nothing is sent twice."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException

from fnatune.outbox import Outbox, ResilientTracker, is_pending
from fnatune.tracking import MlflowTracker, default_tracking_uri, is_transient


class _Store(MlflowTracker):
    """A real SQLite store whose every call fails, as an MLflow server that is down fails, while ``down``."""

    down = False
    calls = 0

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in {"start_run", "log_params", "log_metrics", "log_artifact", "set_tags", "end_run", "show_columns",
                    "run_exists"}:
            def guarded(*args: Any, **kwargs: Any) -> Any:
                type(self).calls += 1
                if type(self).down:
                    raise MlflowException("API request to http://127.0.0.1:5999/api/2.0/mlflow/runs/log-batch failed "
                                          "with exception ConnectionError: Connection refused")
                return attr(*args, **kwargs)
            return guarded
        return attr


def _run(tracker: Any, art: Path, outage: tuple[int, int] = (-1, -1)) -> str:
    """What a run logs: a parent with params, a stage run started (during the outage, if there is one), metrics
    per step, an artifact, tags, the ends. ``_Store.down`` is True for steps in [outage[0], outage[1])."""
    parent = tracker.start_run("pipeline", tags={"fnatune.run_dir": "r"})
    tracker.log_params(parent, {"search.epochs": 4, "name": "t"})
    stage = None
    for step in range(10):
        _Store.down = outage[0] <= step < outage[1]
        if step == 4:
            stage = tracker.start_run("search", parent_id=parent, tags={"fnatune.stage": "search"})
            tracker.log_artifact(stage, art)
        if stage is not None:
            tracker.log_metrics(stage, {"loss": 1.0 / (step + 1), "acc": step / 10}, step=step)
    assert stage is not None
    tracker.set_tags(stage, {"derived_arch": "k3_e3"})
    tracker.end_run(stage)
    tracker.log_metrics(parent, {"mIoU": 50.0})
    tracker.show_columns(["metrics.`mIoU`"])
    tracker.end_run(parent)
    return parent


def _contents(uri: str) -> list[tuple[Any, ...]]:
    """Everything of every run in the store that a user would look at, comparable across stores."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out = []
    exp = client.get_experiment_by_name("exp")
    for r in sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.run_name):
        history = {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)] for k in r.data.metrics}
        parent = r.data.tags.get("mlflow.parentRunId")
        out.append((r.info.run_name, r.info.status, dict(r.data.params), history,
                    {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
                    client.get_run(parent).info.run_name if parent else None,
                    [a.path for a in client.list_artifacts(r.info.run_id)]))
    return out


@pytest.fixture
def art(tmp_path: Path) -> Path:
    p = tmp_path / "arch.json"
    p.write_text('{"ops": []}')
    return p


def test_an_outage_in_the_middle_loses_nothing_and_keeps_the_order(tmp_path: Path, art: Path) -> None:
    calm = default_tracking_uri(tmp_path / "calm")
    _run(MlflowTracker(calm, "exp"), art)
    uri = default_tracking_uri(tmp_path / "stormy")
    t = ResilientTracker(uri, "exp", tmp_path / "run/tracking", retry_s=0.0, connect=_Store)
    _run(t, art, outage=(2, 7))  # the stage run is started while the store is away
    assert t.close() == 0 and not Outbox(tmp_path / "run/tracking").has_pending()
    assert _contents(uri) == _contents(calm)


def test_a_store_that_is_away_costs_one_try_per_retry_interval(tmp_path: Path, art: Path) -> None:
    t = ResilientTracker(default_tracking_uri(tmp_path), "exp", tmp_path / "out", retry_s=3600.0, connect=_Store)
    parent = t.start_run("pipeline")
    _Store.down, _Store.calls = True, 0
    t0 = time.monotonic()
    for i in range(50):
        t.log_metrics(parent, {"loss": float(i)}, step=i)
    assert _Store.calls == 1 and time.monotonic() - t0 < 2.0  # one failed send, then the outbox only
    assert Outbox(tmp_path / "out").size() == 50


def test_a_store_that_never_comes_back_leaves_everything_for_fnatune_sync(tmp_path: Path, art: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from fnatune import outbox
    from fnatune.cli import main

    monkeypatch.setattr(outbox, "MlflowTracker", _Store)  # what `fnatune sync` connects to

    calm = default_tracking_uri(tmp_path / "calm")
    _run(MlflowTracker(calm, "exp"), art)
    uri = default_tracking_uri(tmp_path / "stormy")
    run_dir = tmp_path / "run"
    t = ResilientTracker(uri, "exp", run_dir / "tracking", retry_s=0.0, connect=_Store)
    parent = _run(t, art, outage=(2, 99))
    art.unlink()  # the run went on and removed its file: the outbox kept a copy
    assert t.close() > 0 and t.resolve(parent) == parent  # the parent reached the store before the outage
    res = CliRunner().invoke(main, ["sync", str(run_dir)])
    assert res.exit_code == 2 and "still wait" in res.output and "does not answer" in res.output, res.output
    _Store.down = False
    res = CliRunner().invoke(main, ["sync", str(run_dir)])
    assert res.exit_code == 0 and res.output.startswith("sent "), res.output
    assert _contents(uri) == _contents(calm)
    assert not list((run_dir / "tracking/files").iterdir())  # the copies go once delivered
    assert CliRunner().invoke(main, ["sync", str(run_dir)]).output.endswith("nothing waits to be sent\n")


def test_a_run_started_while_the_store_is_away_gets_a_stand_in_id_resolved_on_delivery(tmp_path: Path) -> None:
    _Store.down = True
    t = ResilientTracker(default_tracking_uri(tmp_path), "exp", tmp_path / "out", retry_s=0.0, connect=_Store)
    parent = t.start_run("pipeline")
    assert is_pending(parent) and t.run_exists(parent) and t.resolve(parent) is None
    child = t.start_run("seed", parent_id=parent)
    t.log_metrics(child, {"x": 1.0})
    _Store.down = False
    assert t.close() == 0
    real = t.resolve(parent)
    assert real and not is_pending(real)
    run = t.client.get_run(t.resolve(child))
    assert run.data.tags["mlflow.parentRunId"] == real and run.data.metrics == {"x": 1.0}


def test_a_record_the_store_refuses_is_set_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    t = ResilientTracker(default_tracking_uri(tmp_path), "exp", tmp_path / "out", retry_s=0.0, connect=_Store)
    run = t.start_run("pipeline")
    t.log_params(run, {"a": 1})
    _Store.down = True
    t.log_params(run, {"a": 2})  # MLflow refuses to change a param: not an outage
    t.log_metrics(run, {"m": 3.0})
    _Store.down = False
    assert t.close() == 0
    assert t.client.get_run(run).data.metrics == {"m": 3.0}
    box = Outbox(tmp_path / "out")
    assert box.failed() == 1 and "INVALID_PARAMETER_VALUE" in (box.dir / "failed.jsonl").read_text()


def test_what_counts_as_an_outage() -> None:
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

    from fnatune.errors import FnatuneError

    assert is_transient(MlflowException("API request to http://h/api failed with exception ConnectionError"))
    assert is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(MlflowException("changed param", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(MlflowException("no run", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(FnatuneError("bad uri")) and not is_transient(ValueError("a bug"))


@pytest.fixture(autouse=True)
def _store_up() -> Any:
    _Store.down = False
    yield
    _Store.down = False


def _trial(args: tuple[str, str, int]) -> str:
    """One sweep trial's tracking, as a run makes it: a trial run, eight stage runs under it, metrics per step."""
    uri, outbox, k = args
    t = ResilientTracker(uri, "load", outbox, retry_s=0.5)
    trial = t.start_run(f"trial{k}")
    t.log_params(trial, {"search.cost.lambda": 0.01 * k, "trial": k})
    for stage in ("data", "seed", "supernet", "search", "target", "finetune", "evaluate", "export"):
        run = t.start_run(stage, parent_id=trial, tags={"fnatune.stage": stage})
        for step in range(12):
            t.log_metrics(run, {"loss": 1.0 / (step + 1), "lr": 0.01}, step=step)
        t.end_run(run)
        t.log_metrics(trial, {f"time_{stage}_s": 1.0})
    t.log_metrics(trial, {"mIoU": float(k)})
    t.end_run(trial)
    deadline = time.monotonic() + 120
    while t.close() and time.monotonic() < deadline:
        time.sleep(0.5)
    return trial


@pytest.mark.slow
def test_eight_concurrent_trials_on_the_default_sqlite_store_lose_nothing(tmp_path: Path) -> None:
    """Issue 26 item 3: eight trials writing one SQLite store at once (the default store of a sweep with
    max_concurrent 8); every trial's metrics and stage runs are there at the end, none twice."""
    import multiprocessing as mp

    from mlflow.tracking import MlflowClient

    uri = default_tracking_uri(tmp_path)
    MlflowTracker(uri, "load")  # the experiment exists before the trials start, as the sweep's driver makes it
    with mp.get_context("spawn").Pool(8) as pool:
        trials = pool.map(_trial, [(uri, str(tmp_path / "sweep/tracking"), k) for k in range(8)])
    assert Outbox(tmp_path / "sweep/tracking").size() == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("load")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == 8 * 9
    for trial in trials:
        stages = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial]
        assert sorted(r.info.run_name for r in stages) == sorted(
            ["data", "seed", "supernet", "search", "target", "finetune", "evaluate", "export"])
        for r in stages:
            assert len(client.get_metric_history(r.info.run_id, "loss")) == 12 and r.info.status == "FINISHED"
        t = client.get_run(trial)
        assert len(t.data.metrics) == 9 and t.info.status == "FINISHED" and t.data.params["trial"] != ""


def test_a_server_that_is_away_when_the_tracker_starts_is_waited_for_not_an_error(tmp_path: Path) -> None:
    """A trial that starts (or ends) while the server is down builds its tracker then: that must queue, not
    fail the trial as a bad URI would (the outage test's second run caught this)."""
    t = ResilientTracker("http://127.0.0.1:9", "exp", tmp_path / "out", retry_s=3600.0)  # nothing listens on 9
    run = t.start_run("pipeline")
    assert is_pending(run) and t.last_error and Outbox(tmp_path / "out").size() == 1
