"""The stage framework: running a run's stages in order, resumably, tracked and reported. It knows no
concrete stage (the flow is :mod:`fnatune.stages`) and no orchestrator (Ray lives in :mod:`fnatune.tune`).

A **stage** is a function ``(ctx, stage) -> {"outputs": {...}, "metrics": {...}}`` that reads what earlier
stages wrote into the run directory and writes its own outputs into ``stage.dir``. When it returns,
``stages/<name>/done.json`` is written atomically (its outputs, metrics and wall-clock hours). A resumed
run skips every stage with a ``done.json`` and re-enters the first one without, which continues from its
own checkpoint. Each stage is a nested MLflow run under the run's parent run; the ids are kept in the run
directory, so a resumed run keeps logging into the same runs.

What a stage needs from outside reaches it through the :class:`RunContext`: the task's backend
(``ctx.backend``), where progress and checkpoints go (``ctx.reporter``: Ray Tune in a trial, nothing
otherwise) and how a learning stage's core is run (``ctx.launcher``: in this process, or over
data-parallel workers when the orchestrator provides a launcher that can start them).
"""
from __future__ import annotations

import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json, atomic_write_text
from fnatune.rundir import RunDir
from fnatune.tracking import Tracker

if TYPE_CHECKING:
    import torch

    from fnatune.config import PipelineCfg
    from fnatune.tasks import TaskBackend

WORKER_RESULT = "dp_result.json"


class Progress:
    """One line per event: stage, epoch/iteration, loss, ETA. Throttled to ``every`` seconds."""

    def __init__(self, echo: Callable[[str], None] | None = None, every: float = 2.0) -> None:
        self.echo = echo or (lambda s: print(s, file=sys.stdout, flush=True))
        self.every = every
        self._last = 0.0

    def __call__(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            self.echo(text)


def eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0:
        return "?"
    left = elapsed / done * max(total - done, 0)
    return f"{int(left // 60)}m{int(left % 60):02d}s"


class Reporter:
    """Where a running stage sends its progress: metrics as they come (per search epoch, per fine-tune log
    interval, per finished stage) and every checkpoint the stage loops write. A Tune trial forwards both
    to Ray Tune (:mod:`fnatune.experiment`); a run outside Tune (a test, a benchmark) keeps this no-op."""

    def metrics(self, stage: str, metrics: dict[str, Any]) -> None: ...

    def checkpoint(self, stage: str, path: Path, progress: dict[str, Any]) -> None: ...


@dataclass
class StageHandle:
    name: str
    dir: Path
    run_id: str
    tracker: Tracker

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(self.run_id, path, artifact_path)

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker.log_params(self.run_id, params)


#: the core of a learning stage: ``(ctx, stage, dp) -> result``, ``dp`` a DataParallel group or None
StageCore = Callable[["RunContext", StageHandle, Any], dict[str, Any]]


class Launcher:
    """Runs a learning stage's core. This one runs it here, in one process; an orchestrator that can start
    data-parallel workers (Ray Train in a Tune trial) provides its own for ``resources.workers > 1``."""

    def run(self, ctx: RunContext, st: StageHandle, core: StageCore) -> dict[str, Any]:
        if ctx.cfg.resources.workers > 1:
            raise FnatuneError(f"resources.workers = {ctx.cfg.resources.workers} runs {st.name} over data-parallel "
                               "workers, which `fnatune run` starts through Ray; this run has no launcher for "
                               "them (set resources.workers=1 to run in this process)")
        return core(ctx, st, None)


@dataclass
class RunContext:
    """Everything a stage can use: the config, the run directory, tracking, progress, the reporter, the
    launcher, and a cache for objects shared between stages of one process (the seed, the backend)."""

    cfg: PipelineCfg
    run: RunDir
    tracker: Tracker
    parent_run: str
    progress: Progress
    reporter: Reporter = field(default_factory=Reporter)
    launcher: Launcher = field(default_factory=Launcher)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> TaskBackend:
        """The task's backend for this run's config (one per context)."""
        if "backend" not in self.cache:
            from fnatune.tasks import get_task

            self.cache["backend"] = get_task(self.cfg.task).backend_for(self.cfg)
        return self.cache["backend"]

    def device(self) -> torch.device:
        import torch

        dev = torch.device(self.cfg.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise FnatuneError(f"device: '{self.cfg.device}' asked for, but CUDA is not available; use --set device=cpu")
        return dev

    def rel(self, path: str | Path) -> str:
        return self.run.rel(path)

    def stage_dir(self, name: str) -> Path:
        return self.run.stage_dir(name)

    def outputs(self, name: str) -> dict[str, Any]:
        return self.run.outputs(name)

    def path(self, stage: str, key: str) -> Path:
        return self.run.output(stage, key)

    def parallel(self, st: StageHandle, core: StageCore) -> dict[str, Any]:
        """Run a learning stage's core through the launcher (here, or data-parallel)."""
        return self.launcher.run(self, st, core)


Stage = tuple[str, Callable[[RunContext, StageHandle], dict[str, Any]]]


def run_stages(ctx: RunContext, stages: list[Stage]) -> dict[str, Any]:
    """Run ``stages`` in order inside ``ctx.run``, skipping completed ones."""
    state = ctx.run.state()
    stage_runs: dict[str, str] = state.setdefault("stage_runs", {})
    summary: dict[str, Any] = {}
    for i, (name, fn) in enumerate(stages):
        sdir = ctx.stage_dir(name)
        if ctx.run.is_done(name):
            ctx.progress(f"[{i + 1}/{len(stages)}] {name}: complete, skipped", force=True)
            summary[name] = ctx.run.done(name)
            continue
        sdir.mkdir(parents=True, exist_ok=True)
        run_id = stage_runs.get(name)
        if run_id is None or not ctx.tracker.run_exists(run_id):
            run_id = ctx.tracker.start_run(name, parent_id=ctx.parent_run, tags={"fnatune.stage": name})
            stage_runs[name] = run_id
            ctx.run.write_state(state)
        else:
            ctx.tracker.set_tags(run_id, {"fnatune.resumed": "true"})
        handle = StageHandle(name, sdir, run_id, ctx.tracker)
        ctx.progress(f"[{i + 1}/{len(stages)}] {name}: started", force=True)
        t0 = time.perf_counter()
        try:
            result = fn(ctx, handle) or {}
        except BaseException as e:
            ctx.tracker.set_tags(run_id, {"fnatune.error": f"{type(e).__name__}: {e}"[:500]})
            ctx.tracker.end_run(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            ctx.tracker.end_run(ctx.parent_run, "FAILED")
            if not isinstance(e, (FnatuneError, KeyboardInterrupt)):
                atomic_write_text(sdir / "error.txt", traceback.format_exc())
            raise
        hours = (time.perf_counter() - t0) / 3600  # this process's share; a resumed stage counts its last leg
        record = {"outputs": result.get("outputs", {}), "metrics": result.get("metrics", {}), "hours": hours}
        handle.log_metrics({**{k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))},
                            "wall_clock_hours": record["hours"]})
        ctx.tracker.log_metrics(ctx.parent_run, {f"time_{name}_s": round(hours * 3600, 2)})  # a column per stage
        ctx.run.mark_done(name, record)
        ctx.tracker.end_run(run_id)
        ctx.reporter.metrics(name, {**record["metrics"], "hours": record["hours"]})
        ctx.progress(f"[{i + 1}/{len(stages)}] {name}: done in {record['hours'] * 3600:.1f} s", force=True)
        summary[name] = record
    return summary


# ------------------------------------------------------------------------------------------ workers
@dataclass(frozen=True)
class WorkerPlan:
    """What a data-parallel worker needs to rebuild the stage's context and run its core (plain data)."""

    stage: str
    core: str                 # "module:qualname" of the stage's core
    cfg: dict[str, Any]
    run_dir: str
    tracking_uri: str
    tracking: bool
    experiment: str
    parent_run: str
    run_id: str
    outbox: str | None = None


def worker_plan(ctx: RunContext, st: StageHandle, core: StageCore) -> WorkerPlan:
    return WorkerPlan(st.name, f"{core.__module__}:{core.__qualname__}", ctx.cfg.model_dump(mode="json", by_alias=True),
                      str(ctx.run.path), ctx.tracker.uri, ctx.cfg.tracking.enabled, ctx.cfg.tracking.experiment,
                      ctx.parent_run, st.run_id, None if ctx.tracker.outbox is None else str(ctx.tracker.outbox))


def worker_result(st: StageHandle) -> Path:
    """Where rank 0 of a data-parallel stage leaves the stage's result for the launcher."""
    return st.dir / WORKER_RESULT


def run_worker(plan: WorkerPlan) -> None:
    """The body of one data-parallel worker (every rank): rebuild the run's context, run the stage's core;
    rank 0 tracks, reports progress and writes the result."""
    from fnatune.config import validate
    from fnatune.distributed import current
    from fnatune.outbox import make_tracker
    from fnatune.tracking import NullTracker

    dp = current()
    main = dp is None or dp.is_main
    cfg = validate(plan.cfg, "data-parallel worker config")
    tracker = make_tracker(plan.tracking_uri, plan.experiment, plan.tracking, plan.outbox) if main else NullTracker()
    run = RunDir(plan.run_dir)
    ctx = RunContext(cfg, run, tracker, plan.parent_run, Progress() if main else Progress(lambda _: None))
    st = StageHandle(plan.stage, run.stage_dir(plan.stage), plan.run_id, tracker)
    module, _, name = plan.core.partition(":")
    core: StageCore = getattr(importlib.import_module(module), name)
    result = core(ctx, st, dp)
    if main:
        atomic_write_json(worker_result(st), result)
