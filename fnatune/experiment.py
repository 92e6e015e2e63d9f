"""What the trials of one ``fnatune run`` are, and what happens around them (Ray-free; the Ray side is
:mod:`fnatune.tune`).

Three shapes, all Tune experiments stored in ``<run_dir>/tune``:

* **one run** (no ``variants``, no ``sweep``): one trial whose directory is the run directory itself,
  tracked as before: a parent MLflow run with one nested run per stage;
* **variants** (the paper's ablations, FNA_SPEC §8): a grid over the variant names; trial directories
  ``<run_dir>/variants/<name>``; a summary table at the end;
* **sweep**: a grid, or Optuna (TPE; NSGA-II for metric and cost together) over dotted config keys,
  optionally with ASHA and a concurrency limit; trial directories ``<run_dir>/trials/<trial id>``; a
  summary table, and the Pareto front (table and plot) when cost is an objective.

For variants and sweeps the driver opens an experiment parent run; every trial is a run nested under it
and the trial's stage runs are nested under the trial's run. The tracking URI is resolved here once (an
absolute path for the default SQLite store) and handed to every trial, so no trial falls back to a store
of its own working directory.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fnatune.config import PipelineCfg, check_sweep_keys
from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json
from fnatune.pipeline import RUN_STATE, Progress, _state, execute, prepare_run_dir, variant_config
from fnatune.tracking import default_tracking_uri, make_tracker

TASK_METRIC = {"seg": "mIoU", "det": "bbox_mAP"}
TRIAL_ERROR = "trial_error.json"


def trial_error(tdir: Path) -> str | None:
    """The FnatuneError a trial stopped with (see :func:`run_trial`), if any."""
    p = tdir / TRIAL_ERROR
    return json.loads(p.read_text())["error"] if p.exists() else None


def task_metric(cfg: PipelineCfg) -> str:
    return (cfg.sweep.metric if cfg.sweep and cfg.sweep.metric else None) or TASK_METRIC[cfg.task]


def shape(cfg: PipelineCfg) -> str:
    return "sweep" if cfg.sweep is not None else "variants" if cfg.variants else "single"


# ------------------------------------------------------------------------------------------ inside a trial
def run_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """The Tune trainable: one pipeline run in the trial's directory (resumed if it exists)."""
    import logging

    import torch

    from fnatune import tune as ft
    from fnatune.config import validate

    logging.getLogger("ray").setLevel(logging.WARNING)  # Ray's INFO lines per checkpoint, in the trial's output
    if spec["cwd"] and os.path.isdir(spec["cwd"]):
        os.chdir(spec["cwd"])  # relative data paths in configs mean the directory `fnatune run` was started in
    ctx = ft.trial_context()
    torch.set_num_threads(max(1, int(ctx["cpus"])))
    base = validate(spec["cfg"], "experiment config")
    run_dir = Path(spec["run_dir"])
    kind = spec["shape"]
    if kind == "single":
        cfg, tdir, name, parent = base, run_dir, None, None
    elif kind == "variants":
        v = next(v for v in base.variants if v.name == config["variant"])
        cfg, tdir, name, parent = variant_config(base, v.set, v.name), run_dir / "variants" / v.name, v.name, spec["parent"]
    else:
        overrides = {k: config[k] for k in spec["keys"]}
        tid = ctx["trial_id"]
        cfg, tdir, parent = variant_config(base, overrides, tid), run_dir / "trials" / tid, spec["parent"]
        name = f"{tid} " + ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in overrides.items())
    prepare_run_dir(cfg, tdir, f"trial {name or cfg.name} of {spec['source']}")
    restored = ft.restore_checkpoint(tdir)
    prefix = f"[{name.split(' ')[0]}] " if name else ""
    progress = Progress(lambda s: print(prefix + s, flush=True))
    if restored:
        how = "restored from Tune's copy" if restored["restored"] else "found in the trial directory"
        progress(f"resuming {restored['stage']} from its checkpoint at step {restored['step']} ({how})", force=True)
    reporter = ft.TuneReporter(tdir, cfg.tune.checkpoint_every_s)
    (tdir / TRIAL_ERROR).unlink(missing_ok=True)
    try:
        execute(cfg, tdir, spec["uri"], progress=progress, source=spec["source"], parent_id=parent, reporter=reporter,
                run_name=name)
    except FnatuneError as e:
        # a user error (config, data, install): a retry cannot fix it, so the trial ends here and the
        # driver reports the message; anything else propagates and Tune retries from the checkpoint
        atomic_write_json(tdir / TRIAL_ERROR, {"error": str(e)})
        return
    tags = {"fnatune.node_ip": ctx["node_ip"], "fnatune.node_id": ctx["node_id"], "fnatune.trial_id": ctx["trial_id"]}
    if kind == "variants":
        tags["fnatune.variant"] = name or ""
    _tracker(spec).set_tags(_state(tdir)["parent_run"], tags)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _tracker(spec: dict[str, Any]) -> Any:
    return make_tracker(spec["uri"], spec["experiment"], spec["tracking"])


# ------------------------------------------------------------------------------------------ the driver
def _param_space(cfg: PipelineCfg) -> tuple[dict[str, Any], list[str]]:
    if cfg.sweep is None:
        if cfg.variants:
            return {"variant": {"grid": [v.name for v in cfg.variants]}}, []
        return {}, []
    space: dict[str, Any] = {}
    for key, spec in cfg.sweep.params.items():
        if cfg.sweep.method == "grid":
            space[key] = {"grid": spec}
        elif isinstance(spec, list):
            space[key] = {"choice": spec}
        else:
            space[key] = dict(spec)
    return space, list(cfg.sweep.params)


def _objectives(cfg: PipelineCfg) -> tuple[list[str], list[str]]:
    assert cfg.sweep is not None
    names = {"metric": task_metric(cfg), "cost": "cost"}
    modes = {"metric": "max", "cost": "min"}
    return [names[o] for o in cfg.sweep.objectives], [modes[o] for o in cfg.sweep.objectives]


def run_experiment(cfg: PipelineCfg, run_dir: Path, *, tracking_uri: str | None = None, address: str | None = None,
                   source: str = "<config>", resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a pipeline as Tune trials; see the module docstring. Returns the summary that
    ``fnatune run`` prints: the single run's stage records, or the rows of the variants/sweep table."""
    from fnatune import tune as ft

    check_sweep_keys(cfg, source)
    # Ray's own convention: RAY_ADDRESS (set inside a Ray job) names the cluster; without it, a local Ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    prepare_run_dir(cfg, run_dir, source)
    run_dir = run_dir.resolve()
    state = _state(run_dir)
    uri = tracking_uri or state.get("tracking_uri") or cfg.tracking.uri or default_tracking_uri()
    kind = shape(cfg)
    spec: dict[str, Any] = {"cfg": cfg.model_dump(mode="json", by_alias=True), "run_dir": str(run_dir), "uri": uri,
                            "experiment": cfg.tracking.experiment, "tracking": cfg.tracking.enabled, "shape": kind,
                            "source": source, "cwd": os.getcwd(), "parent": None, "keys": []}
    tracker = make_tracker(uri, cfg.tracking.experiment, cfg.tracking.enabled)
    state["tracking_uri"] = tracker.uri
    spec["uri"] = tracker.uri
    if kind != "single":
        parent = state.get("parent_run")
        if parent is None or not tracker.run_exists(parent):
            from fnatune.config import flatten

            parent = tracker.start_run(cfg.name, tags={"fnatune.run_dir": str(run_dir), "fnatune.shape": kind})
            tracker.log_params(parent, flatten(cfg))
            if cfg.sweep is not None:
                tracker.log_params(parent, {f"sweep.{k}": v for k, v in
                                            cfg.sweep.model_dump(mode="json", exclude={"params"}).items()})
                tracker.log_params(parent, {f"sweep.params.{k}": json.dumps(v) for k, v in cfg.sweep.params.items()})
            tracker.log_artifact(parent, run_dir / "config.yaml")
        state["parent_run"] = parent
        spec["parent"] = parent
    space, keys = _param_space(cfg)
    spec["keys"] = keys
    state["tune"] = {"storage": str(run_dir / "tune"), "experiment": ft.EXPERIMENT, "shape": kind}
    atomic_write_json(run_dir / RUN_STATE, state)

    r = cfg.resources.model_copy()
    if r.cpu is None:
        r.cpu = float(os.cpu_count() or 1) if kind == "single" and r.workers == 1 else 1.0
    dp = r.workers > 1
    # a data-parallel trial only coordinates; its Ray Train workers hold the CPUs and GPUs
    per_trial = {"cpu": 0.01, "gpu": 0.0} if dp else {"cpu": r.cpu, "gpu": r.gpu}
    need_cpu, need_gpu = (r.cpu * r.workers + per_trial["cpu"], r.gpu * r.workers) if dp else (r.cpu, r.gpu)
    plan = ft.TrialPlan(trainable=run_trial, spec=spec, param_space=space, resources=per_trial,
                        storage=run_dir / "tune", retries=cfg.tune.retries, keep_checkpoints=cfg.tune.keep_checkpoints,
                        pending_timeout_s=cfg.tune.pending_timeout_s, extra={"local": address is None})
    if dp:
        plan.extra["dp_need"] = {"cpu": need_cpu, "gpu": need_gpu}
    sw = cfg.sweep
    if sw is not None:
        plan.max_concurrent = sw.max_concurrent
        if sw.method == "optuna":
            metric, mode = _objectives(cfg)
            plan.search = {"metric": metric, "mode": mode, "seed": sw.seed,
                           "sampler": sw.sampler or ("nsga2" if len(metric) > 1 else "tpe")}
            plan.num_samples = sw.num_samples
        if sw.asha is not None:
            plan.asha = {**sw.asha.model_dump(), "max_t": cfg.search.epochs}
    local_cpus = max(os.cpu_count() or 1, math.ceil(need_cpu))  # a local Ray: enough logical CPUs for one trial
    with ft.ray_session(address, num_cpus=local_cpus if address is None else None):
        # A sweep restores Tune's experiment (its searcher state, its trial ids); one run or the variants
        # simply run again: every trial continues from its own directory (done stages, checkpoints).
        results = ft.run_trials(plan, resume=resume and kind == "sweep")
    if kind == "single":
        if trial_error(run_dir):
            raise FnatuneError(trial_error(run_dir))
        if results and results[0]["error"]:
            raise FnatuneError(f"the run failed after {cfg.tune.retries} retries: {results[0]['error']}")
        return {"shape": kind, "stages": _stage_records(run_dir)}
    from fnatune.summary import summarise

    summary = summarise(cfg, run_dir, results, tracker, state["parent_run"])
    tracker.end_run(state["parent_run"], "FAILED" if all(r["error"] for r in results) else "FINISHED")
    return {"shape": kind, **summary}


def _stage_records(run_dir: Path) -> dict[str, Any]:
    out = {}
    for done in sorted((run_dir / "stages").glob("*/done.json")):
        out[done.parent.name] = json.loads(done.read_text())
    return out
