"""Run directories, stages and resume.

A **stage** is a function ``(ctx, stage) -> dict`` that reads what earlier stages wrote into the run
directory and writes its own outputs into ``stage.dir``. When it returns, ``stages/<name>/done.json``
is written atomically (its outputs, metrics and wall-clock hours). A resumed run skips every stage
with a ``done.json`` and re-enters the first one without, which continues from its own checkpoint.

Each stage is a nested MLflow run under the run's parent run; the ids are kept in the run directory,
so a resumed run keeps logging into the same runs.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnatune.config import PipelineCfg, apply_overrides, dump_config, flatten, validate
from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json, atomic_write_text
from fnatune.tracking import Tracker, make_tracker

RUN_STATE = "run.json"
CONFIG = "config.yaml"


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
    """Where a running trial sends its progress: metrics as they come (per search epoch, per fine-tune log
    interval, per finished stage) and every checkpoint the stage loops write. :mod:`fnatune.tune` forwards
    both to Ray Tune (checkpoints at most one per ``tune.checkpoint_every_s``); a run outside Tune (a test,
    the overhead benchmark) keeps this no-op."""

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


@dataclass
class RunContext:
    cfg: PipelineCfg
    run_dir: Path
    tracker: Tracker
    parent_run: str
    progress: Progress
    cache: dict[str, Any] = field(default_factory=dict)  # objects shared between stages of one process
    reporter: Reporter = field(default_factory=Reporter)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def outputs(self, name: str) -> dict[str, Any]:
        done = self.stage_dir(name) / "done.json"
        if not done.exists():
            raise FnatuneError(f"stage '{name}' has not completed in {self.run_dir}")
        return json.loads(done.read_text())["outputs"]

    def path(self, stage: str, key: str) -> Path:
        return self.run_dir / self.outputs(stage)[key]


Stage = tuple[str, Callable[[RunContext, StageHandle], dict[str, Any]]]


def _state(run_dir: Path) -> dict[str, Any]:
    p = run_dir / RUN_STATE
    return json.loads(p.read_text()) if p.exists() else {}


def run_stages(ctx: RunContext, stages: list[Stage]) -> dict[str, Any]:
    """Run ``stages`` in order inside ``ctx.run_dir``, skipping completed ones."""
    state = _state(ctx.run_dir)
    stage_runs: dict[str, str] = state.setdefault("stage_runs", {})
    summary: dict[str, Any] = {}
    for i, (name, fn) in enumerate(stages):
        sdir = ctx.stage_dir(name)
        done = sdir / "done.json"
        if done.exists():
            ctx.progress(f"[{i + 1}/{len(stages)}] {name}: complete, skipped", force=True)
            summary[name] = json.loads(done.read_text())
            continue
        sdir.mkdir(parents=True, exist_ok=True)
        run_id = stage_runs.get(name)
        if run_id is None or not ctx.tracker.run_exists(run_id):
            run_id = ctx.tracker.start_run(name, parent_id=ctx.parent_run, tags={"fnatune.stage": name})
            stage_runs[name] = run_id
            atomic_write_json(ctx.run_dir / RUN_STATE, state)
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
        atomic_write_json(done, record)
        ctx.tracker.end_run(run_id)
        ctx.reporter.metrics(name, {**record["metrics"], "hours": record["hours"]})
        ctx.progress(f"[{i + 1}/{len(stages)}] {name}: done in {record['hours'] * 3600:.1f} s", force=True)
        summary[name] = record
    return summary


def prepare_run_dir(cfg: PipelineCfg, run_dir: Path, source: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG, f"# resolved from {source}\n" + dump_config(cfg))


def load_run(run_dir: Path) -> PipelineCfg:
    import yaml

    cfg_path = run_dir / CONFIG
    if not cfg_path.exists():
        raise FnatuneError(f"{run_dir} is not a fnatune run directory (no {CONFIG}); start one with `fnatune run`")
    return validate(yaml.safe_load(cfg_path.read_text()), str(cfg_path))


def execute(cfg: PipelineCfg, run_dir: Path, tracking_uri: str | None = None, progress: Progress | None = None,
            source: str = "<config>", parent_id: str | None = None, reporter: Reporter | None = None,
            run_name: str | None = None) -> dict[str, Any]:
    """Run (or resume) the stages of one pipeline in this process, tracked under one parent run (nested
    under ``parent_id`` when given). This is the body of a Tune trial (:mod:`fnatune.tune`); called
    directly it is the same run without Ray (tests, the overhead benchmark)."""
    from fnatune.stages import stages_for

    progress = progress or Progress()
    prepare_run_dir(cfg, run_dir, source)
    state = _state(run_dir)
    uri = tracking_uri or state.get("tracking_uri") or cfg.tracking.uri
    tracker = make_tracker(uri, cfg.tracking.experiment, cfg.tracking.enabled)
    state["tracking_uri"] = tracker.uri
    parent = state.get("parent_run")
    if parent is None or not tracker.run_exists(parent):
        parent = tracker.start_run(run_name or cfg.name, parent_id=parent_id,
                                   tags={"fnatune.run_dir": str(run_dir.resolve())})
        tracker.log_params(parent, flatten(cfg))
        tracker.log_artifact(parent, run_dir / CONFIG)
    state["parent_run"] = parent
    atomic_write_json(run_dir / RUN_STATE, state)
    ctx = RunContext(cfg, run_dir, tracker, parent, progress, reporter=reporter or Reporter())
    result = run_stages(ctx, stages_for(cfg))
    tracker.end_run(parent)
    return result


def variant_config(cfg: PipelineCfg, overrides: dict[str, Any], name: str) -> PipelineCfg:
    """The single-run config of one variant or sweep trial: ``cfg`` with ``overrides`` applied."""
    raw = cfg.model_dump(mode="json", by_alias=True)
    raw["variants"] = []
    raw["sweep"] = None
    raw["name"] = f"{cfg.name}.{name}"
    return validate(apply_overrides(raw, overrides), f"trial '{name}' of {cfg.name}")
