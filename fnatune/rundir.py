"""The run directory: the one type that knows its layout.

A run directory is the single source of truth of a run; everything a stage produces lives in it, so a
killed run resumes from what is there::

    <run>/config.yaml            the resolved config
    <run>/run.json               state: tracking URI, parent and stage MLflow run ids, Tune's storage
    <run>/arch.json              the derived (or fixed) architecture
    <run>/stages/<stage>/        a stage's outputs; done.json once it finished (outputs, metrics, hours)
    <run>/trial_error.json       the user error a trial stopped with (bad config, data, install)
    <run>/owner.lock             held (flock) by the one `fnatune run` / `resume` working here; names its process
    <run>/tune/                  Ray Tune's storage (its experiment and checkpoint copies)
    <run>/trials/<trial id>/     one sweep trial, itself a run directory
    <run>/variants/<name>/       one variant (ablation), itself a run directory
    <run>/<kind>_summary.md|json the table of a sweep's or the variants' trials; pareto_front.md|png (sweeps)

Paths inside ``done.json`` are relative to the run directory, so a run directory can be moved.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from fnatune.config import PipelineCfg


class RunDir:
    """One run directory (see the module docstring). Cheap to create; reads the disk on every call."""

    CONFIG = "config.yaml"
    STATE = "run.json"
    ARCH = "arch.json"
    DONE = "done.json"
    TRIAL_ERROR = "trial_error.json"
    WORKER = "worker.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    # ------------------------------------------------------------------------------------- files
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def arch_path(self) -> Path:
        return self.path / self.ARCH

    @property
    def tune_storage(self) -> Path:
        return self.path / "tune"

    @contextmanager
    def owned(self) -> Iterator[None]:
        """Hold the run directory for the block: a second ``fnatune run``/``resume`` on it is refused at once,
        naming the process that holds it. The lock is the kernel's (``flock``), so a holder that died, even by
        SIGKILL, holds nothing and the next command takes the directory over."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / "owner.lock"
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                try:
                    who = json.loads(f.read() or "{}")
                except ValueError:
                    who = {}
                raise FnatuneError(
                    f"{self.path} is in use by process {who.get('pid', '?')} on {who.get('host', '?')} "
                    f"({who.get('command', '?')}, since {who.get('since', '?')}); wait for it to end or stop it "
                    f"(kill {who.get('pid', '<pid>')}), then run `fnatune resume {self.path}`") from None
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(
                ["fnatune", *sys.argv[1:]]), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def exists(self) -> bool:
        """Whether a run was started here (its state file exists)."""
        return (self.path / self.STATE).exists()

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the run directory, as ``done.json`` stores it."""
        return str(Path(path).resolve().relative_to(self.path.resolve()))

    # ------------------------------------------------------------------------------------- config
    def write_config(self, cfg: PipelineCfg, source: str) -> None:
        from fnatune.config import dump_config

        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, f"# resolved from {source}\n" + dump_config(cfg))

    def read_config(self) -> PipelineCfg:
        from fnatune.config import read_yaml_mapping, validate

        if not self.config_path.exists():
            raise FnatuneError(f"{self.path} is not a fnatune run directory (no {self.CONFIG}); "
                               "start one with `fnatune run`")
        return validate(read_yaml_mapping(self.config_path, "run config"), str(self.config_path))

    # ------------------------------------------------------------------------------------- state
    @staticmethod
    def read_json(path: Path, remedy: str) -> dict[str, Any]:
        """A run file written by fnatune (always atomically, so damage comes from outside: a disk error, an
        editor, a copy cut short), or one clear line naming it and ``remedy``."""
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, OSError) as e:
            raise FnatuneError(f"{path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                               f"{remedy}") from None
        if not isinstance(data, dict):
            raise FnatuneError(f"{path} is damaged (a JSON {type(data).__name__}, not an object); {remedy}")
        return data

    def state(self) -> dict[str, Any]:
        p = self.path / self.STATE
        if not p.exists():
            return {}
        return self.read_json(p, "it holds the run's MLflow run ids: restore it from a backup, or delete it "
                                 "to continue the run under new MLflow runs")

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.path / self.STATE, state)

    def update_state(self, **values: Any) -> dict[str, Any]:
        state = {**self.state(), **values}
        self.write_state(state)
        return state

    def check(self) -> None:
        """Read every file a resume reads (the state and each stage's record, of this run and of its trials and
        variants), so a damaged one is one clear line naming it before anything starts."""
        for state in sorted(self.path.glob(f"**/{self.STATE}")):
            if "tune" not in state.relative_to(self.path).parts:
                RunDir(state.parent).state()
        for record in sorted(self.path.glob(f"**/stages/*/{self.DONE}")):
            RunDir(record.parent.parent.parent)._done_record(record)

    # ------------------------------------------------------------------------------------- stages
    def stage_dir(self, name: str) -> Path:
        return self.path / "stages" / name

    def is_done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / self.DONE).exists()

    def done(self, stage: str) -> dict[str, Any]:
        """The record of a finished stage: ``{"outputs", "metrics", "hours"}`` ({} while unfinished)."""
        p = self.stage_dir(stage) / self.DONE
        return self._done_record(p) if p.exists() else {}

    def _done_record(self, p: Path) -> dict[str, Any]:
        record = self.read_json(p, f"delete it and `fnatune resume {self.path}` runs stage '{p.parent.name}' again")
        if not isinstance(record.get("outputs", {}), dict):
            raise FnatuneError(f"{p} is damaged (its 'outputs' is no mapping); delete it and "
                               f"`fnatune resume {self.path}` runs stage '{p.parent.name}' again")
        return record

    def mark_done(self, stage: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.stage_dir(stage) / self.DONE, record)

    def unmark_done(self, stage: str) -> None:
        (self.stage_dir(stage) / self.DONE).unlink(missing_ok=True)

    def stage_records(self) -> dict[str, dict[str, Any]]:
        """Every finished stage's record, by stage name."""
        return {p.parent.name: self._done_record(p) for p in sorted(self.path.glob(f"stages/*/{self.DONE}"))}

    def outputs(self, stage: str) -> dict[str, Any]:
        if not self.is_done(stage):
            raise FnatuneError(f"stage '{stage}' has not completed in {self.path}")
        return self.done(stage)["outputs"]

    def output(self, stage: str, key: str) -> Path:
        """A finished stage's output file ``key``."""
        return self.path / self.outputs(stage)[key]

    # ------------------------------------------------------------------------------------- trials
    def trial(self, trial_id: str) -> RunDir:
        return RunDir(self.path / "trials" / trial_id)

    def variant(self, name: str) -> RunDir:
        return RunDir(self.path / "variants" / name)

    def summary_path(self, kind: str, suffix: str = ".md") -> Path:
        """Where the end-of-run table of ``kind`` ("sweep", "ablation") goes."""
        return self.path / f"{kind}_summary{suffix}"

    def pareto_path(self, suffix: str = ".md") -> Path:
        return self.path / f"pareto_front{suffix}"

    def summaries(self) -> list[Path]:
        """The end-of-run tables and plots that exist, for the console's last lines."""
        candidates = [self.summary_path(k) for k in ("ablation", "sweep")] + [self.pareto_path(".md"),
                                                                             self.pareto_path(".png")]
        return [p for p in candidates if p.exists()]

    def trial_runs(self) -> list[RunDir]:
        """The run directories of this run's sweep trials and variants."""
        return [RunDir(p) for kind in ("trials", "variants") if (self.path / kind).is_dir()
                for p in sorted((self.path / kind).iterdir()) if p.is_dir()]

    def set_worker(self) -> None:
        """Record the process (and host) that works on this run now: Ray's memory monitor names the process it
        kills, and the driver finds the trial by it."""
        atomic_write_json(self.path / self.WORKER, {"pid": os.getpid(), "host": socket.gethostname()})

    def worker_pid(self) -> int | None:
        """The process :meth:`set_worker` recorded, if any (None when unreadable: it is only a hint)."""
        try:
            return int(json.loads((self.path / self.WORKER).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def trial_error(self) -> str | None:
        """The user error this run (a trial) stopped with, if any."""
        p = self.path / self.TRIAL_ERROR
        return str(self.read_json(p, "delete it").get("error")) if p.exists() else None

    def set_trial_error(self, message: str | None) -> None:
        p = self.path / self.TRIAL_ERROR
        if message is None:
            p.unlink(missing_ok=True)
        else:
            atomic_write_json(p, {"error": message})
