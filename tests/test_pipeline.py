"""Run directories: completed stages are skipped on resume, a failed stage keeps its run, MLflow nesting."""
from __future__ import annotations

from pathlib import Path

import pytest

from fnatune.config import validate
from fnatune.errors import FnatuneError
from fnatune.framework import Progress, RunContext, run_stages
from fnatune.rundir import RunDir
from fnatune.tracking import MlflowTracker, default_tracking_uri


def _ctx(tmp_path: Path, tracker) -> RunContext:  # type: ignore[no-untyped-def]
    cfg = validate({"name": "t", "task": "seg"})
    lines: list[str] = []
    ctx = RunContext(cfg, RunDir(tmp_path / "run"), tracker, tracker.start_run("t"), Progress(lines.append, every=0))
    ctx.cache["lines"] = lines
    return ctx


def test_completed_stages_are_skipped_and_the_failed_one_resumes(tmp_path: Path) -> None:
    tracker = MlflowTracker(default_tracking_uri(tmp_path), "t")
    ctx = _ctx(tmp_path, tracker)
    calls: list[str] = []
    fail = {"b": True}

    def a(c, st):  # type: ignore[no-untyped-def]
        calls.append("a")
        (st.dir / "out.txt").write_text("a")
        return {"outputs": {"out": "stages/a/out.txt"}, "metrics": {"m": 1.0}}

    def b(c, st):  # type: ignore[no-untyped-def]
        calls.append("b")
        assert c.path("a", "out").read_text() == "a"
        if fail["b"]:
            raise FnatuneError("boom")
        return {"metrics": {"acc": 0.5}}

    with pytest.raises(FnatuneError, match="boom"):
        run_stages(ctx, [("a", a), ("b", b)])
    b_run = __import__("json").loads((ctx.run.path / "run.json").read_text())["stage_runs"]["b"]
    fail["b"] = False
    summary = run_stages(ctx, [("a", a), ("b", b)])
    assert calls == ["a", "b", "b"]
    assert "[1/2] a: complete, skipped" in ctx.cache["lines"]
    assert summary["b"]["metrics"] == {"acc": 0.5} and summary["a"]["hours"] >= 0
    # the resumed stage logs into the same MLflow run, nested under the pipeline's run
    state = __import__("json").loads((ctx.run.path / "run.json").read_text())
    assert state["stage_runs"]["b"] == b_run
    run = tracker.client.get_run(b_run)
    assert run.data.tags["mlflow.parentRunId"] == ctx.parent_run
    assert run.data.metrics["acc"] == 0.5 and "wall_clock_hours" in run.data.metrics
