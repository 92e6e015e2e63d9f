"""What the trials of one ``fnatune run`` are, and what happens around them (Ray-free; the Ray side is
:mod:`fnatune.tune`, reached through its typed plans).

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

Inside a trial, :class:`TrialReporter` forwards the stages' metrics and checkpoints to Tune, and
:class:`RayTrainLauncher` runs ``resources.workers > 1`` learning stages over Ray Train workers.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnatune.config import PipelineCfg, check_sweep_keys, flatten, validate
from fnatune.errors import FnatuneError
from fnatune.framework import (
    Launcher,
    Progress,
    Reporter,
    RunContext,
    StageCore,
    StageHandle,
    run_worker,
    worker_plan,
    worker_result,
)
from fnatune.outbox import make_tracker, outbox_of
from fnatune.reconfigure import tag_changes
from fnatune.rundir import RunDir
from fnatune.summary import knob_label
from fnatune.tracking import default_tracking_uri

STATE_FILE = "fnatune_state.json"  # inside a Tune checkpoint: which stage file it is, and its step


def shape(cfg: PipelineCfg) -> str:
    return "sweep" if cfg.sweep is not None else "variants" if cfg.variants else "single"


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of one experiment gets (plain data: it travels to the trials)."""

    cfg: dict[str, Any]
    run_dir: str
    uri: str
    experiment: str
    tracking: bool
    shape: str
    source: str
    cwd: str
    parent: str | None = None
    keys: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------ inside a trial
class TrialReporter(Reporter):
    """Forwards a trial's progress to Ray Tune. Metrics are carried forward (each report holds the latest
    value of everything reported so far, as ``<stage>_<name>``), so schedulers and searchers find their
    metric in every result; the evaluate stage's metrics also appear under their own names (``mIoU``), and
    the export stage's whole-network MAdds as ``cost`` (GMAdds). A stage checkpoint becomes a Tune
    checkpoint, holding that file and where it belongs in the trial directory, when ``every_s`` has passed
    since the last one (``tune.checkpoint_every_s``; 0: every one)."""

    def __init__(self, run: RunDir, every_s: float = 0.0) -> None:
        self.run = run
        self.carry: dict[str, float] = {}
        self.every_s = every_s
        self.last_copy = time.monotonic()  # the first copy waits one interval too: a retry redoes at most that

    def metrics(self, stage: str, metrics: dict[str, Any]) -> None:
        from fnatune import tune as ft

        self._carry(stage, metrics)
        ft.report(self.carry)

    def checkpoint(self, stage: str, path: Path, progress: dict[str, Any]) -> None:
        from fnatune import tune as ft

        step = progress.get("step", progress.get("it", 0))
        self.carry[f"{stage}_step"] = float(step)
        if time.monotonic() - self.last_copy < self.every_s:
            # Tune copies every checkpoint it is given (a supernet with its optimiser state is tens of MB
            # at toy size); between copies the metrics still go out
            ft.report(self.carry)
            return
        # the staging folder sits next to the checkpoint, so the hard link never crosses file systems
        with tempfile.TemporaryDirectory(prefix=".tune-ckpt-", dir=Path(path).parent) as d:
            try:
                os.link(path, Path(d) / "checkpoint.pt")  # no copy here; Tune copies it into its storage
            except OSError:
                shutil.copyfile(path, Path(d) / "checkpoint.pt")
            rel = os.path.relpath(path, self.run.path)
            (Path(d) / STATE_FILE).write_text(json.dumps({"stage": stage, "path": rel, "step": step}))
            ft.report(self.carry, checkpoint_dir=Path(d))
        self.last_copy = time.monotonic()

    def _carry(self, stage: str, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                self.carry[f"{stage}_{k}"] = float(v)
                if stage == "evaluate":
                    self.carry[k] = float(v)
        if stage == "export" and "madds_paper_resolution" in metrics:
            self.carry["cost"] = float(metrics["madds_paper_resolution"]) / 1e9  # GMAdds, whole network


def restore_from_tune(run: RunDir) -> dict[str, Any] | None:
    """Put the trial's last Tune checkpoint back into ``run`` when the local copy is gone (its node was lost,
    its disk wiped). A local checkpoint is kept: it is never older than Tune's copy of it."""
    from fnatune import tune as ft

    with ft.last_checkpoint() as d:
        if d is None:
            return None
        state = json.loads((d / STATE_FILE).read_text())
        target = run.path / state["path"]
        state["restored"] = not target.exists() and not run.is_done(state["stage"])
        if state["restored"]:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".restoring")
            shutil.copyfile(d / "checkpoint.pt", tmp)
            os.replace(tmp, target)
    return state


class RayTrainLauncher(Launcher):
    """Runs a learning stage's core over ``resources.workers`` Ray Train workers (one process otherwise).
    The workers resume from the stage's checkpoint like a single process; rank 0 writes the outputs."""

    def run(self, ctx: RunContext, st: StageHandle, core: StageCore) -> dict[str, Any]:
        from fnatune import tune as ft

        r = ctx.cfg.resources
        if r.workers <= 1:
            return core(ctx, st, None)
        result = worker_result(st)
        result.unlink(missing_ok=True)
        ctx.progress(f"  {st.name}: data-parallel over {r.workers} workers", force=True)
        ft.data_parallel(run_worker, worker_plan(ctx, st, core), r.workers, ft.Resources(r.cpu or 1.0, r.gpu),
                         ctx.run.tune_storage / f"dp-{st.name}", what=st.name)
        return json.loads(result.read_text())


def run_trial(config: dict[str, Any], payload: TrialSpec) -> None:
    """The Tune trainable: one pipeline run in the trial's directory (resumed if it exists)."""
    import logging

    import torch

    from fnatune import tune as ft
    from fnatune.pipeline import execute, variant_config

    logging.getLogger("ray").setLevel(logging.WARNING)  # Ray's INFO lines per checkpoint, in the trial's output
    spec = payload
    if spec.cwd and os.path.isdir(spec.cwd):
        os.chdir(spec.cwd)  # relative data paths in configs mean the directory `fnatune run` was started in
    info = ft.trial_info()
    torch.set_num_threads(max(1, int(info.cpus)))
    base = validate(spec.cfg, "experiment config")
    root = RunDir(spec.run_dir)
    if spec.shape == "single":
        cfg, run, name, parent = base, root, None, None
    elif spec.shape == "variants":
        v = next(v for v in base.variants if v.name == config["variant"])
        cfg, run, name, parent = variant_config(base, v.set, v.name), root.variant(v.name), v.name, spec.parent
    else:
        overrides = {k: config[k] for k in spec.keys}
        cfg, run, parent = variant_config(base, overrides, info.trial_id), root.trial(info.trial_id), spec.parent
        name = f"{info.trial_id} {knob_label(overrides)}"
    run.write_config(cfg, f"trial {name or cfg.name} of {spec.source}")
    run.set_worker()
    restored = restore_from_tune(run)
    prefix = f"[{name.split(' ')[0]}] " if name else ""
    progress = Progress(lambda s: print(prefix + s, flush=True))
    if restored:
        how = "restored from Tune's copy" if restored["restored"] else "found in the trial directory"
        progress(f"resuming {restored['stage']} from its checkpoint at step {restored['step']} ({how})", force=True)
    run.set_trial_error(None)
    try:
        execute(cfg, run, spec.uri, progress=progress, source=spec.source, parent_id=parent,
                reporter=TrialReporter(run, cfg.tune.checkpoint_every_s), launcher=RayTrainLauncher(), run_name=name,
                outbox=outbox_of(spec.run_dir))
    except FnatuneError as e:
        # a user error (config, data, install): a retry cannot fix it, so the trial ends here and the
        # driver reports the message; anything else propagates and Tune retries from the checkpoint
        run.set_trial_error(str(e))
        return
    tags = {"fnatune.node_ip": info.node_ip, "fnatune.node_id": info.node_id, "fnatune.trial_id": info.trial_id}
    if spec.shape == "variants":
        tags["fnatune.variant"] = name or ""
    tracker = make_tracker(spec.uri, spec.experiment, spec.tracking, outbox_of(spec.run_dir))
    tracker.set_tags(run.state()["parent_run"], tags)
    tracker.close()


# ------------------------------------------------------------------------------------------ the driver
def _params(cfg: PipelineCfg) -> dict[str, Any]:
    from fnatune import tune as ft

    if cfg.sweep is None:
        return {"variant": ft.Param("grid", tuple(v.name for v in cfg.variants))} if cfg.variants else {}
    out = {}
    for key, spec in cfg.sweep.params.items():
        if cfg.sweep.method == "grid":
            out[key] = ft.Param("grid", tuple(spec))
        elif isinstance(spec, list):
            out[key] = ft.Param("choice", tuple(spec))
        else:
            (kind, values), = spec.items()
            out[key] = ft.Param(kind, tuple(values))
    return out


def _plan(cfg: PipelineCfg, spec: TrialSpec, run: RunDir, address: str | None) -> Any:
    from fnatune import tune as ft

    r = cfg.resources
    single = shape(cfg) == "single"
    cpu = r.cpu if r.cpu is not None else float(os.cpu_count() or 1) if single and r.workers == 1 else 1.0
    if r.workers > 1:  # a data-parallel trial only coordinates; its Ray Train workers hold the CPUs and GPUs
        own, need = ft.Resources(0.01, 0.0), ft.Resources(cpu * r.workers + 0.01, r.gpu * r.workers)
    else:
        own = need = ft.Resources(cpu, r.gpu)
    optuna = asha = None
    sw = cfg.sweep
    if sw is not None and sw.method == "optuna":
        names = {"metric": cfg.metric_name(), "cost": "cost"}
        modes = {"metric": "max", "cost": "min"}
        optuna = ft.OptunaPlan(tuple(names[o] for o in sw.objectives), tuple(modes[o] for o in sw.objectives),
                               sw.sampler or ("nsga2" if len(sw.objectives) > 1 else "tpe"), sw.seed)
    if sw is not None and sw.asha is not None:
        a = sw.asha
        asha = ft.AshaPlan("search_epoch", a.metric, a.mode, cfg.search.epochs, a.grace_period, a.reduction_factor)
    return ft.TrialPlan(
        trainable=run_trial, payload=spec, storage=run.tune_storage, resources=own, need=need, params=_params(cfg),
        local=address is None, retries=cfg.tune.retries, keep_checkpoints=cfg.tune.keep_checkpoints,
        pending_timeout_s=cfg.tune.pending_timeout_s, optuna=optuna, asha=asha,
        max_concurrent=sw.max_concurrent if sw else None, num_samples=sw.num_samples if optuna and sw else 1)


def preflight(cfg: PipelineCfg) -> None:
    """What each trial's first stages would find wrong, found here first, before Ray starts or anything is
    pretrained: the device; the space and the seed network (their names, the seed's options, and that the seed's
    blocks fit the space: the seed is built, with its checkpoint when that is a local file, else with random
    weights); and the data (generated if the config asks, then checked the way the task reads it: layout,
    annotations, every image file; :meth:`fnatune.tasks.TaskBackend.prepare`). For a local run only: on a cluster
    the devices and the data paths are the worker nodes' (their data stage checks them)."""
    import torch

    from fnatune.pipeline import variant_config
    from fnatune.remap import fit_problem
    from fnatune.seeds import get_seed_adapter, load_seed, looks_like_path
    from fnatune.space import get_space
    from fnatune.stages.data import check_batches
    from fnatune.tasks import get_task

    configs = [cfg] + [variant_config(cfg, v.set, v.name) for v in cfg.variants]
    seen, nets = set(), set()
    for c in configs:
        dev = torch.device(c.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise FnatuneError(f"device: '{c.device}' asked for, but CUDA is not available on this machine; use "
                               f"--set device=cpu")
        get_space(c.space), get_seed_adapter(c.seed_net.name)  # the names first: a typo is said at once
        key = json.dumps([c.task, c.data.model_dump(mode="json")], sort_keys=True)
        if key not in seen:
            seen.add(key)
            backend = get_task(c.task).backend_for(c)
            check_batches(c, backend, backend.prepare())
        # building the seed imports torchvision's models (some 3 s): after the data, whose errors are the common ones
        net = json.dumps([c.space, c.seed_net.model_dump(mode="json")], sort_keys=True)
        if net not in nets:
            nets.add(net)
            w = c.seed_net.weights
            local = w is not None and w != "pretrain" and looks_like_path(w)  # read and matched to the seed here
            problem = fit_problem(load_seed(c.seed_net.name, w if local else None, **c.seed_net.options),
                                  get_space(c.space))
            if problem:
                raise FnatuneError(problem)


def memory_message(cfg: PipelineCfg, run: RunDir, gb: float, root: RunDir | None = None) -> str:
    """One line for a trial that Ray's memory monitor killed: where (the stage, the search's kind of step), how much
    its worker held, and the settings that lower the peak. ``run`` is the trial's run directory (with ``cfg``, its
    config); ``root``, when that trial belongs to a sweep or variants, the directory to resume."""
    from fnatune.search import STEP_FILE
    from fnatune.stages import stages_for

    stage = next((name for name, _ in stages_for(cfg) if not run.is_done(name)), "?")
    during = ""
    step = run.stage_dir(stage) / "work" / STEP_FILE
    try:
        kind = json.loads(step.read_text()).get("kind", "") if stage == "search" else ""
    except (OSError, ValueError):
        kind = ""
    if kind:
        during = f" during its {kind} steps" + (" (every candidate of every layer at once)" if kind == "arch" else "")
    held = "" if gb != gb else f", its worker holding {gb:.1f} GB"
    s, f = cfg.search, cfg.finetune
    resume = f"fnatune resume {(root or run).path}"
    if root is None:
        if stage == "search":
            key, now, less = _input_size(cfg, "search")
            smaller = (f"lower search.batch_size (now {s.batch_size}; `{resume} --set search.batch_size="
                       f"{s.batch_size // 2}` starts the search over) or its input size ({key}, now {now})"
                       if s.batch_size > 1 else "lower the search's input size (the batch is 1): "
                                                + _restart(resume, key, less, "search"))
            if kind != "weight" and s.recompute_mixed < 1:
                lower = (f"recompute every mixed layer in the backward pass (same gradients; now "
                         f"{s.recompute_mixed:g}): `{resume} --set search.recompute_mixed=1`, or {smaller}")
            else:
                lower = smaller
        elif stage == "finetune":
            key, now, less = _input_size(cfg, "finetune")
            lower = (f"lower finetune.batch_size (now {f.batch_size}; `{resume} --set finetune.batch_size="
                     f"{f.batch_size // 2}` starts the fine-tune over; scale finetune.optim.lr with it) or its input "
                     f"size ({key}, now {now})" if f.batch_size > 1 else
                     "lower the fine-tune's input size (the batch is 1): " + _restart(resume, key, less, "finetune"))
        else:
            lower = f"give the trial a machine with more memory, then `{resume}`"
    else:  # a sweep's trial: its settings are its own, and a resume only changes how trials run
        lower = (f"its search.batch_size is {s.batch_size}, its finetune.batch_size {f.batch_size}: lower them in a "
                 f"new run, or continue as it is with `{resume}`")
    trial = "the trial" if root is None else f"trial {run.path.name}"
    return (f"Ray's memory monitor killed {trial} in stage '{stage}'{during}{held}: the machine ran short of "
            f"memory; {lower}")


def _input_size(cfg: PipelineCfg, stage: str) -> tuple[str, str, str]:
    """The key of ``stage``'s input size (det: the resize scale; the other tasks: the crop), its value, and a value
    of about 3/4 the side (a multiple of 32), written as ``--set`` takes them."""
    from fnatune.tasks import get_task

    task = get_task(cfg.task).name
    if task == "pose":  # a person crop's size, which every stage shares: not one a resume can change
        key, size = "pose.input_size", cfg.pose.input_size  # type: ignore[attr-defined]
    else:
        field = "scale" if task == "det" else "crop"
        key, size = f"{stage}.augment.{field}", getattr(getattr(cfg, stage).augment, field)
    less = [max(32, int(v * 0.75) // 32 * 32) for v in size]
    return key, f"[{size[0]}, {size[1]}]", f"[{less[0]},{less[1]}]"


def _restart(resume: str, key: str, value: str, stage: str) -> str:
    """How to continue with ``key`` set to ``value``: a resume that starts ``stage`` over, when ``key`` is one of
    that stage's own settings; else a new run."""
    if key.startswith(stage + "."):
        return f"`{resume} --set {key}={value}` starts the {stage} over"
    return f"{key} (e.g. {value}) in a new run; every stage uses it"


def _memory_error(cfg: PipelineCfg, run: RunDir, killed: Any) -> FnatuneError:
    """The one line for :class:`fnatune.tune.MemoryKilled`: about the trial whose process was killed (found by its
    pid among the run's trials), or, when none is found, about the run as a whole."""
    if shape(cfg) == "single":
        return FnatuneError(memory_message(cfg, run, killed.gb))
    trial = next((t for t in run.trial_runs() if killed.pid is not None and t.worker_pid() == killed.pid), None)
    if trial is not None:
        try:
            return FnatuneError(memory_message(trial.read_config(), trial, killed.gb, root=run))
        except FnatuneError:
            pass  # the trial's config is unreadable: say it about the run
    held = "" if killed.gb != killed.gb else f" (a process holding {killed.gb:.1f} GB)"
    fewer = "fewer trials at once (sweep.max_concurrent) or " if cfg.sweep is not None else ""
    return FnatuneError(f"Ray's memory monitor killed one of the trials{held}: the machine ran short of memory; "
                        f"start a new run with {fewer}lower search.batch_size and finetune.batch_size, or continue "
                        f"as it is with `fnatune resume {run.path}`")


def run_experiment(cfg: PipelineCfg, run_dir: str | Path, *, tracking_uri: str | None = None,
                   address: str | None = None, source: str = "<config>", resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a pipeline as Tune trials; see the module docstring. Returns the summary that
    ``fnatune run`` prints: the single run's stage records, or the rows of the variants/sweep table."""
    from fnatune import tune as ft

    check_sweep_keys(cfg, source)
    # Ray's own convention: RAY_ADDRESS (set inside a Ray job) names the cluster; without it, a local Ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        preflight(cfg)
    run = RunDir(Path(run_dir))
    run.write_config(cfg, source)
    run = RunDir(run.path.resolve())
    state = run.state()
    uri = tracking_uri or state.get("tracking_uri") or cfg.tracking.uri or default_tracking_uri()
    kind = shape(cfg)
    tracker = make_tracker(uri, cfg.tracking.experiment, cfg.tracking.enabled, outbox_of(run.path))
    state["tracking_uri"] = tracker.uri
    parent = None
    if kind != "single":
        parent = state.get("parent_run")
        if parent is None or not tracker.run_exists(parent):
            parent = tracker.start_run(cfg.name, tags={"fnatune.run_dir": str(run.path), "fnatune.shape": kind})
            tracker.log_params(parent, flatten(cfg))
            if cfg.sweep is not None:
                tracker.log_params(parent, {f"sweep.{k}": v for k, v in
                                            cfg.sweep.model_dump(mode="json", exclude={"params"}).items()})
                tracker.log_params(parent, {f"sweep.params.{k}": json.dumps(v) for k, v in cfg.sweep.params.items()})
            tracker.log_artifact(parent, run.config_path)
        state["parent_run"] = parent
        run.write_state(state)
        tag_changes(run, tracker, parent)
        state = run.state()
    spec = TrialSpec(cfg.model_dump(mode="json", by_alias=True), str(run.path), tracker.uri, cfg.tracking.experiment,
                     cfg.tracking.enabled, kind, source, os.getcwd(), parent,
                     tuple(cfg.sweep.params) if cfg.sweep else ())
    state["tune"] = {"storage": str(run.tune_storage), "experiment": ft.EXPERIMENT, "shape": kind}
    run.write_state(state)
    plan = _plan(cfg, spec, run, address)
    local_cpus = max(os.cpu_count() or 1, math.ceil(plan.need.cpu))  # a local Ray: enough logical CPUs for one trial
    with ft.ray_session(address, num_cpus=local_cpus if address is None else None):
        # A sweep restores Tune's experiment (its searcher state, its trial ids); one run or the variants
        # simply run again: every trial continues from its own directory (done stages, checkpoints).
        try:
            results = ft.run_trials(plan, resume=resume and kind == "sweep")
        except ft.MemoryKilled as killed:
            raise _memory_error(cfg, run, killed) from None
    if kind == "single":
        if results and results[0].memory_gb is not None:
            raise FnatuneError(memory_message(cfg, run, results[0].memory_gb))
        if run.trial_error():
            raise FnatuneError(run.trial_error())
        if results and results[0].error:
            raise FnatuneError(f"the run failed after {cfg.tune.retries} retries: {results[0].error}")
        from fnatune.stages import stages_for

        missing = [name for name, _ in stages_for(cfg) if not run.is_done(name)]
        if missing:  # Tune returned, but the trial did not finish (its process died, Tune was stopped)
            raise FnatuneError(f"the run's trial ended before it finished (not done: {', '.join(missing)})")
        return {"shape": kind, "stages": run.stage_records()}
    from fnatune.summary import summarise

    summary = summarise(cfg, run, results, tracker, state["parent_run"])
    tracker.end_run(state["parent_run"], "FINISHED" if any(r["complete"] for r in summary["rows"]) else "FAILED")
    tracker.close()
    return {"shape": kind, **summary}
