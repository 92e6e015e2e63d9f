"""Experiment tracking behind a small interface; the only module that imports ``mlflow``.

MLflow changed its default store in 3.x and its fluent API keeps global state (an "active run" per
thread), which breaks as soon as runs are nested across stages and Ray workers. So everything here goes
through an explicit ``MlflowClient(tracking_uri)`` and explicit run ids: a parent run per
``fnatune run``, a nested run per stage (``mlflow.parentRunId``), the URI and ids passed along.

Default store: SQLite in the working directory (``sqlite:///<cwd>/mlflow.db``), artifacts beside it in
``mlartifacts/``. ``fnatune ui`` serves that store on 127.0.0.1.
"""
from __future__ import annotations

import base64
import json
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
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


#: the store schemes MLflow 3.x opens (a plain path or file: is its folder store)
_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc", "file")


def check_tracking_uri(uri: str) -> str:
    """``uri`` if MLflow can use it as a tracking store from here, else one :class:`FnatuneError` line that says
    what is wrong with it: an unknown scheme (``localhost:5000`` lacks its ``http://``), a server address without
    a host, a SQLite file whose folder cannot be created or written. Creates a SQLite store's folder."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a path
        scheme = ""
    if scheme not in _SCHEMES and scheme:
        hint = f"; did you mean http://{uri}?" if parsed.path.isdigit() or (":" in uri and "/" not in uri) else ""
        raise FnatuneError(f"tracking URI '{uri}': unknown scheme '{scheme}:' (expected sqlite:///PATH, http(s)://HOST:"
                           f"PORT, postgresql://..., mysql://...){hint}")
    if scheme in ("http", "https") and not parsed.netloc:
        raise FnatuneError(f"tracking URI '{uri}': no host (expected {scheme}://HOST:PORT)")
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise FnatuneError(f"tracking URI '{uri}': a folder store, which MLflow 3.x keeps in maintenance mode and "
                           f"refuses; use sqlite:///{(parsed.path or uri).rstrip('/')}/mlflow.db (or set "
                           "MLFLOW_ALLOW_FILE_STORE=true)")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise FnatuneError(f"tracking URI '{uri}': expected sqlite:///PATH (three slashes, then the file)")
        db = Path(uri[len("sqlite:///"):])
        if not str(db) or db.is_dir():
            raise FnatuneError(f"tracking URI '{uri}': names a folder; name the database file in it, e.g. "
                               f"sqlite:///{db / 'mlflow.db'}")
        blocker = next((p for p in (db.parent, *db.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise FnatuneError(f"tracking URI '{uri}': {blocker} is a file, not a folder; choose another path")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FnatuneError(f"tracking URI '{uri}': its folder {db.parent} cannot be created ({e.strerror})") from None
        if not os.access(db.parent, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.W_OK)):
            where = db if db.exists() else db.parent
            raise FnatuneError(f"tracking URI '{uri}': {where} is not writable here; choose another path")
    return uri


class TrackingUnavailable(RuntimeError):
    """The tracking store failed in a way that can pass (a server down, a network error). Not a
    :class:`~fnatune.errors.FnatuneError`: a Tune trial that hits it is retried from its checkpoint."""


class Tracker:
    """Records runs, params, metrics and artifacts. :class:`NullTracker` does nothing (tracking off)."""

    uri: str = ""
    outbox: Path | None = None  # the folder that keeps what the store could not take yet (fnatune.outbox)

    def start_run(self, name: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        raise NotImplementedError

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...

    def show_columns(self, columns: Sequence[str]) -> None:
        """Make sure the experiment's results view shows ``columns`` (keys from :func:`view_columns`)."""

    def run_exists(self, run_id: str) -> bool:
        return False

    def close(self) -> int:
        """Send what waits, if anything; returns how many records still wait (see :mod:`fnatune.outbox`)."""
        return 0


class NullTracker(Tracker):
    def start_run(self, name: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        return f"null-{name}-{time.time_ns()}"


# Kept for MLflow versions that read it; 3.17's web app ignores it (its landing page comes from the URL's
# ``workflowType`` or the browser's last choice, GenAI by default), so our links carry the mode themselves.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# The runs table's saved view that fnatune keeps on each experiment: MLflow 3.x stores a shared view as an
# experiment tag ``mlflow.sharedViewState.<key>`` holding {"name", "state": "deflate;" + base64(zlib(json))},
# and opens it from ``#/experiments/<id>/runs?viewStateShareKey=<key>`` (format read from 3.17.2's web app).
RESULTS_VIEW = "fnatune"
_VIEW_TAG = f"mlflow.sharedViewState.{RESULTS_VIEW}"
_VIEW_NAME = "fnatune: metric vs cost"
_RUN_NAME_COLUMN = "attributes.`Run Name`"
# opens the runs table in MLflow's "Model training" mode instead of its GenAI traces
_ML_MODE = "workflowType=machine_learning"


def encode_view_state(state: Mapping[str, Any]) -> str:
    return "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()


def decode_view_state(text: str) -> dict[str, Any]:
    kind, _, body = text.partition(";")
    raw = zlib.decompress(base64.b64decode(body)) if kind == "deflate" else text.encode()
    return json.loads(raw)


def view_columns(metrics: Sequence[str] = (), tags: Sequence[str] = (), params: Sequence[str] = ()) -> list[str]:
    """Runs-table column keys as MLflow's UI spells them (``metrics.`mIoU```)."""
    return ([f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
            + [f"tags.`{t}`" for t in tags])


class MlflowTracker(Tracker):
    """MLflow through an explicit client; see the module docstring."""

    def __init__(self, uri: str | None = None, experiment: str = "fnatune") -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:  # pragma: no cover - mlflow is a core dependency
            raise FnatuneError("MLflow is not installed: pip install 'mlflow>=3.1'") from e
        self.uri = check_tracking_uri(uri or default_tracking_uri())
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_root(self.uri), tags=dict([EXPERIMENT_KIND]))
            else:
                self.experiment_id = exp.experiment_id
                if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                    self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        except FnatuneError:
            raise
        except Exception as e:
            if is_transient(e):  # a server that is away: fnatune.outbox waits for it; not the URI's fault
                raise TrackingUnavailable(f"MLflow at {self.uri} does not answer ({type(e).__name__}: "
                                          f"{' '.join(str(e).split())[:200]})") from e
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise FnatuneError(f"tracking URI '{self.uri}': MLflow cannot open its store ({type(e).__name__}: "
                               f"{first.strip()[:200]}); fix --tracking-uri / tracking.uri, or set "
                               "tracking.enabled=false") from None

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

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None,
                    timestamp: int | None = None) -> None:
        from mlflow.entities import Metric

        now = timestamp or int(time.time() * 1000)  # a record delivered late keeps the time it was made
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

    def end_run(self, run_id: str, status: str = "FINISHED", end_time: int | None = None) -> None:
        self.client.set_terminated(run_id, status=status, end_time=end_time)

    def show_columns(self, columns: Sequence[str]) -> None:
        """Add the missing ``columns`` to the experiment's saved view :data:`RESULTS_VIEW`, creating it if
        needed. Only adds: columns, order, widths, filters and sorting that a user changed in the UI and
        saved over the view stay as they are, and runs of different tasks add their own headline metric."""
        exp = self.client.get_experiment(self.experiment_id)
        saved = exp.tags.get(_VIEW_TAG)
        now = int(time.time() * 1000)
        view: dict[str, Any] = {"name": _VIEW_NAME, "createdAt": now}
        state: dict[str, Any] = {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False,
                                 "selectedColumns": []}
        if saved:
            try:
                view = json.loads(saved)
                state = decode_view_state(view["state"])
            except (ValueError, KeyError, TypeError, zlib.error):
                pass  # a view we cannot read is replaced by ours rather than stopping a run
        have = list(state.get("selectedColumns") or [])
        missing = [c for c in columns if c not in have]
        if saved and not missing:
            return
        state["selectedColumns"] = have + missing
        # the table's order and widths apply to the columns listed in columnOrder only (3.17's grid): ours
        # come right after the run's name, which is wide enough for a sweep trial's knobs, the arch wider still
        order = list(state.get("columnOrder") or [_RUN_NAME_COLUMN])
        state["columnOrder"] = order + [c for c in missing if c not in order]
        widths = dict(state.get("columnWidths") or {})
        widths.setdefault(_RUN_NAME_COLUMN, 250)
        for c in missing:
            if c.startswith("tags.`arch`"):
                widths.setdefault(c, 500)
        state["columnWidths"] = widths
        view.update(state=encode_view_state(state), updatedAt=now)
        self.client.set_experiment_tag(self.experiment_id, _VIEW_TAG, json.dumps(view))

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


#: what a store answers when it refused a record for good (the record is wrong, not the store away)
_REFUSALS = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                       "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
                       "CUSTOMER_UNAUTHORIZED", "FEATURE_DISABLED", "ENDPOINT_NOT_FOUND"})


def is_transient(e: BaseException | None) -> bool:
    """Whether a tracking failure can pass: the store away (a connection refused, a timeout, a 5xx), or busy
    (SQLite's "database is locked"). A store's refusal of the record itself, or our own user error, cannot."""
    if isinstance(e, TrackingUnavailable):
        return True
    if e is None or isinstance(e, FnatuneError):
        return False
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a core dependency
        MlflowException = ()  # type: ignore[assignment]
    if isinstance(e, MlflowException):
        text = str(e)
        if "database is locked" in text or "API request to" in text or "Max retries exceeded" in text:
            return True
        return e.error_code not in _REFUSALS
    name = type(e).__name__
    return isinstance(e, (OSError, TimeoutError)) or name in ("OperationalError", "ConnectionError", "Timeout",
                                                              "ReadTimeout", "ConnectTimeout")


def experiment_page(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table with fnatune's saved view, in MLflow's "Model training" mode."""
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={RESULTS_VIEW}&{_ML_MODE}"


def _experiment_of(uri: str, run_id: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except MlflowException:
        return None


def run_page(uri: str, run_id: str, base: str = "http://127.0.0.1:5000") -> str | None:
    """The run's page in the MLflow UI (``fnatune ui``'s default address); None if the store has no such run."""
    exp = _experiment_of(uri, run_id)
    return f"{base}/#/experiments/{exp}/runs/{run_id}?{_ML_MODE}" if exp else None


def runs_table_page(uri: str, run_id: str, base: str = "http://127.0.0.1:5000") -> str | None:
    """The runs table (fnatune's view) of the experiment that holds ``run_id``; None if there is no such run."""
    exp = _experiment_of(uri, run_id)
    return experiment_page(exp, base) if exp else None


def results_pages(uri: str, base: str = "http://127.0.0.1:5000") -> list[tuple[str, str]]:
    """(experiment name, runs-table page) for each experiment of the store that fnatune wrote to; none when
    the store cannot be read (the UI itself then says why)."""
    from mlflow.tracking import MlflowClient

    try:
        exps = MlflowClient(tracking_uri=uri).search_experiments()
    except Exception:
        return []
    return [(e.name, experiment_page(e.experiment_id, base)) for e in exps if _VIEW_TAG in e.tags]


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for a store, bound to localhost by default."""
    import sys

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = _artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    return cmd
