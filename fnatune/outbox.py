"""Tracking that cannot fail a run: records a store could not take wait in the run directory until it can.

A tracking store is outside fnatune: a server restarted in the middle of a search, a network that drops, a
SQLite file that eight trials write at once ("database is locked"). None of these may stop a trial, and none
may lose what the run computed. So :class:`ResilientTracker` sends each record (a run, params, metrics, tags,
an artifact, a run's end) to the store as it comes while the store answers, and when a send fails in a way
that can pass, it appends the record, in order, to the run directory's outbox instead::

    <run>/tracking/outbox.jsonl   records not yet delivered, one JSON object a line, in the order they were made
    <run>/tracking/ids.json       stand-in run ids (made while the store was away) -> the store's own ids
    <run>/tracking/files/         copies of the artifacts of queued records (a checkpoint may be gone by then)
    <run>/tracking/store.json     the store and experiment the records belong to
    <run>/tracking/failed.jsonl   records the store refused outright when they were delivered (with its reason)

Later records go to the outbox too until it has been delivered (at most one try every ``retry_s`` seconds, so
a store that is away costs the run nothing), so the store sees every record in the order it was made. A run
made while the store was away gets a stand-in id (``pending-<hex>``); records that name it are delivered
under the store's id once the run exists there. One outbox serves every process of a run (the driver, its
trials, their workers), under a file lock. When a run ends with records still waiting, ``fnatune`` says so and
``fnatune sync RUN_DIR`` delivers them.

Errors that cannot pass (a param logged twice with another value, a run the store does not know) are the
store's answer, not an outage: sent directly they raise as they always did; found in the outbox they are set
aside in ``failed.jsonl`` so that one bad record cannot hold up the rest.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json, atomic_write_text, file_lock
from fnatune.tracking import MlflowTracker, NullTracker, Tracker, check_tracking_uri, default_tracking_uri, is_transient

PENDING = "pending-"
OUTBOX = "outbox.jsonl"


def is_pending(run_id: str | None) -> bool:
    """Whether ``run_id`` is a stand-in for a run the store has not been told of yet."""
    return bool(run_id) and str(run_id).startswith(PENDING)


class Outbox:
    """The folder of one run's undelivered records (see the module docstring). Every method takes the lock."""

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)

    @property
    def path(self) -> Path:
        return self.dir / OUTBOX

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / ".lock"):
            yield

    def size(self) -> int:
        """How many records wait (0 when there is no outbox)."""
        if not self.path.exists():
            return 0
        with self.path.open() as f:
            return sum(1 for line in f if line.strip())

    def has_pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    raise FnatuneError(f"{self.path}, line {n}: not a record (the file is damaged); delete that "
                                       "line to deliver the others") from None
        return out

    def append(self, record: dict[str, Any]) -> None:
        """Queue ``record`` (under the lock held by the caller), its artifact copied into the outbox."""
        if record["op"] == "log_artifact":
            src = Path(record["path"])
            keep = self.dir / "files" / uuid.uuid4().hex / src.name
            keep.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, keep)
            elif src.exists():
                shutil.copy2(src, keep)
            record = {**record, "path": str(keep)}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: Sequence[dict[str, Any]]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def ids(self) -> dict[str, str]:
        p = self.dir / "ids.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def set_id(self, ref: str, run_id: str) -> None:
        atomic_write_json(self.dir / "ids.json", {**self.ids(), ref: run_id})

    def store(self) -> dict[str, str]:
        p = self.dir / "store.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def set_store(self, uri: str, experiment: str) -> None:
        if self.store() != {"uri": uri, "experiment": experiment}:
            atomic_write_json(self.dir / "store.json", {"uri": uri, "experiment": experiment})

    def set_aside(self, record: dict[str, Any], reason: str) -> None:
        with (self.dir / "failed.jsonl").open("a") as f:
            f.write(json.dumps({**record, "refused": reason}) + "\n")

    def failed(self) -> int:
        p = self.dir / "failed.jsonl"
        return sum(1 for line in p.read_text().splitlines() if line.strip()) if p.exists() else 0


class _Unresolved(Exception):
    """A record names a stand-in run id whose run the store does not have yet."""


class ResilientTracker(Tracker):
    """A :class:`~fnatune.tracking.Tracker` whose records are never lost and never fail the run (see the module
    docstring). ``connect`` builds the store's client (:class:`~fnatune.tracking.MlflowTracker`)."""

    def __init__(self, uri: str, experiment: str, outbox: str | Path, retry_s: float = 30.0,
                 connect: Callable[[str, str], MlflowTracker] | None = None) -> None:
        # an MLflow server that is away would otherwise hold every call for minutes (7 retries with backoff,
        # a 120 s timeout); fnatune retries itself, from the outbox. And no "View run ... at" lines among ours.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri, self.experiment = uri, experiment
        self.box = Outbox(outbox)
        self.outbox = self.box.dir
        self.retry_s = retry_s
        self._connect = connect or (lambda u, e: MlflowTracker(u, e))
        self._store: MlflowTracker | None = None
        self._retry_at = 0.0
        self.down_since: float | None = None
        self.last_error = ""
        self.box.set_store(uri, experiment)
        self._client()  # a store that cannot be used at all (a bad URI) is said at once, an absent one waits

    # ------------------------------------------------------------------------------------- the store
    def _client(self) -> MlflowTracker | None:
        if self._store is None:
            try:
                self._store = self._connect(self.uri, self.experiment)
            except Exception as e:
                if not is_transient(e):
                    raise
                self._away(e)
        return self._store

    def _away(self, e: BaseException) -> None:
        self._retry_at = time.monotonic() + self.retry_s
        self.down_since = self.down_since or time.time()
        self.last_error = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"

    @property
    def client(self) -> Any:
        """The store's MLflow client (for code that reads from the store)."""
        store = self._client()
        if store is None:
            raise FnatuneError(f"the tracking store at {self.uri} does not answer ({self.last_error})")
        return store.client

    # ------------------------------------------------------------------------------------- sending
    def _send(self, record: dict[str, Any]) -> Any:
        """Send ``record`` now if the store answers and nothing waits before it, else queue it. Returns the
        store's answer, or None when queued."""
        if self.box.has_pending() or time.monotonic() < self._retry_at:
            with self.box.locked():
                self.box.append(record)
            self._deliver_if_due()
            return None
        store = self._client()
        if store is None:
            with self.box.locked():
                self.box.append(record)
            return None
        try:
            return _apply(store, record, self.box.ids())
        except _Unresolved:
            pass  # it names a run that still waits in the outbox (another process's): it queues behind it
        except Exception as e:
            if not is_transient(e):
                raise
            self._away(e)
        with self.box.locked():
            self.box.append(record)
        return None

    def _deliver_if_due(self) -> None:
        if time.monotonic() >= self._retry_at:
            self.deliver()

    def deliver(self) -> int:
        """Deliver the outbox in order, as far as the store takes it; returns how many records still wait."""
        with self.box.locked():
            records = self.box.records()
            if not records:
                return 0
            store = self._client()
            if store is None:
                return len(records)
            done = 0
            for record in records:
                try:
                    answer = _apply(store, record, self.box.ids())
                except _Unresolved as e:
                    self.box.set_aside(record, str(e))  # its run was never queued: nothing can resolve it
                except Exception as e:
                    if is_transient(e):
                        self._away(e)
                        break
                    code = getattr(e, "error_code", "")
                    self.box.set_aside(record, f"{type(e).__name__}{f' {code}' if code else ''}: "
                                               f"{' '.join(str(e).split())[:300]}")
                else:
                    if record["op"] == "start_run":
                        self.box.set_id(record["ref"], answer)
                    if record["op"] == "log_artifact" and Path(record["path"]).is_relative_to(self.box.dir):
                        shutil.rmtree(Path(record["path"]).parent, ignore_errors=True)
                done += 1
            self.box.rewrite(records[done:])
            if done == len(records):
                self.down_since = None
            return len(records) - done

    # ------------------------------------------------------------------------------------- the Tracker API
    def start_run(self, name: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        ref = PENDING + uuid.uuid4().hex
        answer = self._send({"op": "start_run", "ref": ref, "name": name, "parent": parent_id, "tags": dict(tags or {})})
        return str(answer) if answer is not None else ref

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._send({"op": "log_params", "run": run_id, "params": {k: str(v) for k, v in params.items()}})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if numbers:
            self._send({"op": "log_metrics", "run": run_id, "metrics": numbers, "step": step,
                        "time": int(time.time() * 1000)})

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._send({"op": "log_artifact", "run": run_id, "path": str(Path(path).resolve()),
                        "artifact_path": artifact_path})

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._send({"op": "set_tags", "run": run_id, "tags": {k: str(v) for k, v in tags.items()}})

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._send({"op": "end_run", "run": run_id, "status": status, "time": int(time.time() * 1000)})

    def show_columns(self, columns: Sequence[str]) -> None:
        self._send({"op": "show_columns", "columns": list(columns)})

    def run_exists(self, run_id: str) -> bool:
        """A stand-in id exists (its run is queued or delivered); a store that does not answer is taken to
        have the run, so a resumed run never starts a second history because of an outage."""
        if is_pending(run_id):
            return True
        store = self._client()
        if store is None:
            return True
        try:
            return store.run_exists(run_id)
        except Exception as e:
            if not is_transient(e) and not is_transient(e.__cause__):
                raise
            self._away(e)
            return True

    def resolve(self, run_id: str) -> str | None:
        """The store's id of ``run_id`` (itself unless it is a stand-in not delivered yet: None)."""
        return self.box.ids().get(run_id) if is_pending(run_id) else run_id

    def close(self) -> int:
        """A last try at the outbox; returns how many records still wait."""
        return self.deliver() if self.box.has_pending() else 0


def _apply(store: MlflowTracker, record: dict[str, Any], ids: Mapping[str, str]) -> Any:
    """Do ``record`` on the store, its stand-in run ids replaced by the store's."""
    def real(run_id: str | None) -> str | None:
        if run_id is None or not is_pending(run_id):
            return run_id
        if run_id not in ids:
            raise _Unresolved(f"run {run_id} has not reached the store")
        return ids[run_id]

    op = record["op"]
    if op == "start_run":
        return store.start_run(record["name"], real(record["parent"]), record["tags"])
    if op == "show_columns":
        return store.show_columns(record["columns"])
    run = real(record["run"])
    assert run is not None
    if op == "log_params":
        return store.log_params(run, record["params"])
    if op == "log_metrics":
        return store.log_metrics(run, record["metrics"], record["step"], timestamp=record["time"])
    if op == "log_artifact":
        return store.log_artifact(run, record["path"], record["artifact_path"])
    if op == "set_tags":
        return store.set_tags(run, record["tags"])
    if op == "end_run":
        return store.end_run(run, record["status"], end_time=record["time"])
    raise FnatuneError(f"unknown tracking record '{op}'")


def sync(run_dir: str | Path, uri: str | None = None, retry_s: float = 0.0) -> tuple[int, int, str]:
    """Deliver the records that wait in ``run_dir``'s outbox (to its own store, or ``uri``): returns (delivered,
    still waiting, the last error)."""
    box = Outbox(Path(run_dir) / "tracking")
    before = box.size()
    if not before:
        return 0, 0, ""
    meta = box.store()
    if not meta and uri is None:
        raise FnatuneError(f"{box.dir} does not name its tracking store; pass --tracking-uri")
    tracker = ResilientTracker(uri or meta["uri"], meta.get("experiment", "fnatune"), box.dir, retry_s)
    left = tracker.deliver()
    return before - left, left, tracker.last_error


def make_tracker(uri: str | None, experiment: str, enabled: bool = True, outbox: str | Path | None = None) -> Tracker:
    """A run's tracker: with ``outbox`` (the run directory's ``tracking/`` folder, :func:`outbox_of`) one that a
    store outage cannot fail (:class:`ResilientTracker`); without, the store's client itself."""
    if not enabled:
        return NullTracker()
    if outbox is None:
        return MlflowTracker(uri, experiment)
    return ResilientTracker(check_tracking_uri(uri or default_tracking_uri()), experiment, outbox)


def outbox_of(run_dir: str | Path) -> Path:
    """The outbox folder of the run directory ``run_dir`` (a sweep's or ablation's root: its trials share it)."""
    return Path(run_dir) / "tracking"


__all__ = ["Outbox", "ResilientTracker", "is_pending", "make_tracker", "outbox_of", "sync"]
