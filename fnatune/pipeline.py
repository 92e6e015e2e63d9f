"""One adaptation run in this process: the flow of :mod:`fnatune.stages` run by the framework of
:mod:`fnatune.framework` in a run directory, tracked under one MLflow parent run.

This is the body of a Ray Tune trial (:mod:`fnatune.experiment`); called directly it is the same run
without Ray (tests, benchmarks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fnatune.config import PipelineCfg, apply_overrides, flatten, validate
from fnatune.framework import Launcher, Progress, Reporter, RunContext, run_stages
from fnatune.outbox import make_tracker, outbox_of
from fnatune.reconfigure import tag_changes
from fnatune.rundir import RunDir


def execute(cfg: PipelineCfg, run_dir: str | Path | RunDir, tracking_uri: str | None = None,
            progress: Progress | None = None, source: str = "<config>", parent_id: str | None = None,
            reporter: Reporter | None = None, launcher: Launcher | None = None,
            run_name: str | None = None, outbox: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the stages of one pipeline in this process, tracked under one parent run (nested
    under ``parent_id`` when given). Returns the stage records. What the tracking store cannot take waits in
    ``outbox`` (default: the run directory's; a sweep's trials share their root's) and never fails the run."""
    from fnatune.stages import stages_for

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    progress = progress or Progress()
    run.write_config(cfg, source)
    state = run.state()
    uri = tracking_uri or state.get("tracking_uri") or cfg.tracking.uri
    tracker = make_tracker(uri, cfg.tracking.experiment, cfg.tracking.enabled, outbox or outbox_of(run.path))
    state["tracking_uri"] = tracker.uri
    parent = state.get("parent_run")
    if parent is None or not tracker.run_exists(parent):
        parent = tracker.start_run(run_name or cfg.name, parent_id=parent_id,
                                   tags={"fnatune.run_dir": str(run.path.resolve())})
        tracker.log_params(parent, flatten(cfg))
        tracker.log_artifact(parent, run.config_path)
    state["parent_run"] = parent
    run.write_state(state)
    tag_changes(run, tracker, parent)
    ctx = RunContext(cfg, run, tracker, parent, progress, reporter=reporter or Reporter(),
                     launcher=launcher or Launcher())
    result = run_stages(ctx, stages_for(cfg))
    _headline(run, tracker, parent, cfg.metric_name())
    tracker.end_run(parent)
    left = tracker.close()
    if left:
        progress(f"tracking: {left} record(s) wait for {tracker.uri} in {tracker.outbox} (it did not answer); "
                 f"the run's results are complete in {run.path}", force=True)
    return result


def _headline(run: RunDir, tracker: Any, parent: str, metric: str) -> None:
    """What the runs table should show for a finished run (a sweep trial included), on its parent run: the
    derived arch as a tag, and the whole network's cost at the paper's resolution beside the seed's own;
    and the experiment's saved view showing them as columns beside ``metric`` and the two long stages."""
    from fnatune.arch import Arch
    from fnatune.tracking import view_columns

    if run.arch_path.exists():
        tracker.set_tags(parent, {"arch": Arch.load(run.arch_path).block_string()})
    ex = run.done("export").get("metrics", {})
    names = {"madds_paper_resolution": ("cost_GMAdds", 1e9), "params": ("params_M", 1e6),
             "seed_madds_paper_resolution": ("seed_cost_GMAdds", 1e9), "seed_params": ("seed_params_M", 1e6)}
    metrics = {name: round(float(ex[k]) / scale, 4) for k, (name, scale) in names.items() if ex.get(k) is not None}
    if metrics:
        tracker.log_metrics(parent, metrics)
    tracker.show_columns(view_columns([metric, "cost_GMAdds", "seed_cost_GMAdds", "params_M", "seed_params_M",
                                       "time_search_s", "time_finetune_s"], tags=["arch"]))


def variant_config(cfg: PipelineCfg, overrides: dict[str, Any], name: str) -> PipelineCfg:
    """The single-run config of one variant or sweep trial: ``cfg`` with ``overrides`` applied."""
    raw = cfg.model_dump(mode="json", by_alias=True)
    raw["variants"] = []
    raw["sweep"] = None
    raw["name"] = f"{cfg.name}.{name}"
    return validate(apply_overrides(raw, overrides), f"trial '{name}' of {cfg.name}")
