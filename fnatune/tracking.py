"""Experiment tracking behind a small interface; the only module that imports ``mlflow``.

MLflow changed its default store in 3.x and its fluent API keeps global state (an "active run" per
thread), which breaks as soon as runs are nested across stages and Ray workers. So everything here goes
through an explicit ``MlflowClient(tracking_uri)`` and explicit run ids: a parent run per
``fnatune run``, a nested run per stage (``mlflow.parentRunId``), the URI and ids passed along.

Default store: SQLite in the working directory (``sqlite:///<cwd>/mlflow.db``), artifacts beside it in
``mlartifacts/``. ``fnatune ui`` serves that store on 127.0.0.1.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fnatune.errors import FnatuneError

MAX_PARAM_VALUE = 6000


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    return f"sqlite:///{(Path(cwd or os.getcwd()) / 'mlflow.db').resolve()}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts next to a SQLite store (MLflow would otherwise pick ./mlartifacts of whatever cwd)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None  # other stores (a server, a folder) choose their own artifact location


class Tracker:
    """Records runs, params, metrics and artifacts. :class:`NullTracker` does nothing (tracking off)."""

    uri: str = ""

    def start_run(self, name: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        raise NotImplementedError

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...

    def run_exists(self, run_id: str) -> bool:
        return False


class NullTracker(Tracker):
    def start_run(self, name: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        return f"null-{name}-{time.time_ns()}"


# MLflow 3's UI opens an experiment on its GenAI "Traces" page unless the experiment says it holds model
# training runs (the tag and value its web app reads, checked in mlflow 3.17.2's bundled UI)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class MlflowTracker(Tracker):
    """MLflow through an explicit client; see the module docstring."""

    def __init__(self, uri: str | None = None, experiment: str = "fnatune") -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:  # pragma: no cover - mlflow is a core dependency
            raise FnatuneError("MLflow is not installed: pip install 'mlflow>=3.1'") from e
        self.uri = uri or default_tracking_uri()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=_artifact_root(self.uri),
                                                               tags=dict([EXPERIMENT_KIND]))
        else:
            self.experiment_id = exp.experiment_id
            if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)

    def start_run(self, name: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = dict(tags or {})
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(run_id, str(p), artifact_path)
        elif p.exists():
            self.client.log_artifact(run_id, str(p), artifact_path)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def run_exists(self, run_id: str) -> bool:
        """Whether the store has run ``run_id``. Only the store's own "does not exist" answer means no: any
        other failure (a tracking server that does not answer) raises, so a resumed run never forks its
        history into a new MLflow run because of a passing error."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise TrackingUnavailable(f"MLflow at {self.uri} could not tell whether run {run_id} exists "
                                      f"({e.error_code}: {e.message})") from e
        except Exception as e:  # connection errors of a remote store
            raise TrackingUnavailable(f"MLflow at {self.uri} could not tell whether run {run_id} exists "
                                      f"({type(e).__name__}: {e})") from e


class TrackingUnavailable(RuntimeError):
    """The tracking store failed in a way that can pass (a server down, a network error). Not a
    :class:`~fnatune.errors.FnatuneError`: a Tune trial that hits it is retried from its checkpoint."""


def make_tracker(uri: str | None, experiment: str, enabled: bool = True) -> Tracker:
    return MlflowTracker(uri, experiment) if enabled else NullTracker()


def run_page(uri: str, run_id: str, base: str = "http://127.0.0.1:5000") -> str | None:
    """The run's page in the MLflow UI (``fnatune ui``'s default address); None if the store has no such run.
    The runs' own pages, not the experiment's landing page: MLflow 3.17's UI opens experiments on GenAI traces."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        return None
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for a store, bound to localhost by default."""
    import sys

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = _artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    return cmd
