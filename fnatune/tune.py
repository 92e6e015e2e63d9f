"""Ray Tune and Ray Train behind a small interface; the only module that imports ``ray``.

Every ``fnatune run`` is a Tune experiment (see :mod:`fnatune.experiment` for what its trials are):

* :func:`ray_session` starts a local Ray for the run, quietly and bound to 127.0.0.1 only, or joins
  the cluster at ``--address`` after checking that it answers (an unreachable address fails in seconds
  with the command that starts one).
* :func:`run_trials` runs the trials with :class:`ray.tune.Tuner`: one function trainable
  (:func:`_trial`) that calls :func:`fnatune.pipeline.execute` in the trial's directory, with a
  :class:`TuneReporter` that forwards the stage loops' metrics (per search epoch, per fine-tune log
  interval, per stage) and their checkpoints to ``tune.report``. A retried or restored trial first
  puts its last Tune checkpoint back where the stage loop looks for it (if that file was lost with its
  node), then resumes like ``fnatune resume``. Tune's storage is ``<run_dir>/tune``.
* :func:`data_parallel` runs one learning stage over N Ray Train workers inside a trial.

Ray changes its reporting API every few releases (DESIGN §4); nothing outside this file needs to know.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback, Stopper

from fnatune.errors import FnatuneError
from fnatune.pipeline import Reporter

LOCALHOST = "127.0.0.1"
EXPERIMENT = "experiment"
START_HINT = ("start one with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --node-ip-address=127.0.0.1 "
              "--port=6379` on this machine (the variable keeps Ray on 127.0.0.1), or "
              "`ray up cluster.yaml` for the GPU cluster; or leave out --address to run on a local Ray "
              "that fnatune starts and stops for you")
LOG_DRAIN_S = 0.3  # Ray's log monitor polls the workers' log files every 0.1 s
FAULT_ENV = "FNATUNE_TEST_FAULT"  # "stage:step": fail once at that checkpoint (tests of retries)


# ------------------------------------------------------------------------------------------ the Ray runtime
def _quiet_environment(local: bool) -> None:
    """Settings that must be in the environment before Ray starts its processes (they inherit it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")      # no usage reports to the internet
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")       # relative paths in configs stay the user's
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is the record, not CSV/TB files
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")           # honour verbose=0 (no tables per result)
    os.environ.setdefault("TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S", "1e9")  # we time out with our own message
    # the objective (mIoU, cost) exists from the last stages on; earlier results carry the search's metrics
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if local:
        # Ray resolves 127.0.0.1 to the machine's network address unless its "cluster" mode is off; off,
        # every process of the local Ray (GCS, raylet, workers, object store) binds to the loopback only,
        # and a driver joining a cluster on the loopback connects to 127.0.0.1 as it was told.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def _host_port(address: str) -> tuple[str, str]:
    """``"ray://10.0.0.1:10001/"`` -> ``("10.0.0.1", "10001")`` (brackets of an IPv6 host stripped)."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    return host.strip("[]"), port


def _on_loopback(address: str) -> bool:
    host = _host_port(address)[0]
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    if address == "auto":
        return
    host, port = _host_port(address)
    if not host or not port.isdigit():
        raise FnatuneError(f"--address {address}: expected HOST:PORT (e.g. 127.0.0.1:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise FnatuneError(f"no Ray cluster answers at {address} ({e.strerror or e}); {START_HINT}") from None


def _token_auth_if_available() -> None:
    """Ray (2.52+) turns token authentication on for clusters it starts, but a driver joining an explicit
    address sends its token only with RAY_AUTH_MODE=token, and is otherwise refused with a bare "failed to
    connect". Like Ray's own ``address="auto"``: if a token is at hand and the mode is unset, use it (a
    cluster without authentication accepts such a driver too)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _forwarded_env() -> dict[str, str]:
    """Our own variables (cache location, test hooks) travel to the trials on every node."""
    return {k: v for k, v in os.environ.items() if k.startswith("FNATUNE_") or k == "MLFLOW_TRACKING_URI"}


@contextmanager
def ray_session(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None
                ) -> Iterator[dict[str, float]]:
    """Ray for the duration of the block; yields the cluster's total resources. Reuses a Ray that this
    process already initialised (and leaves it running)."""
    loopback = address is None or _on_loopback(address)
    _quiet_environment(local=loopback)
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        yield dict(ray.cluster_resources())
        return
    logging.getLogger("ray").setLevel(logging.ERROR)
    runtime_env = {"env_vars": {**_forwarded_env(), "RAY_CHDIR_TO_TRIAL_DIR": "0"}}
    if address is not None:
        _check_reachable(address)
        _token_auth_if_available()
    was = ray_constants.ENABLE_RAY_CLUSTER
    if loopback:  # the same switch as the env var, for a ray imported before it was set
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        if address is not None:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.ERROR, log_to_driver=True)
        else:
            # address="local": a Ray of our own even when `ray start` left a cluster on this machine
            # (plain ray.init() would join that one, and refuse num_cpus)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus,
                     include_dashboard=False, _node_ip_address=LOCALHOST, runtime_env=runtime_env,
                     logging_level=logging.ERROR, log_to_driver=True, configure_logging=True)
    except Exception as e:  # ConnectionError, or a version mismatch with the cluster
        if address is None:
            raise
        raise FnatuneError(f"could not join the Ray cluster at {address}: {e}; {START_HINT}") from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was
    try:
        yield dict(ray.cluster_resources())
    finally:
        time.sleep(LOG_DRAIN_S)  # the log monitor forwards the trials' last lines before Ray goes
        if address is None:
            _kill_autoscaler_monitor()
        ray.shutdown()


def _kill_autoscaler_monitor() -> None:
    """A local Ray has nothing to autoscale, but its head still runs the autoscaler's monitor, which sits
    out the whole second of grace ``ray.shutdown`` gives it after SIGTERM. Killing it first saves that
    second on every local run. Private Ray API, so any surprise just leaves the usual shutdown."""
    try:
        from ray._private import ray_constants, worker

        node = worker._global_node
        for info in (node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node else []):
            info.process.kill()
            info.process.wait(timeout=5)
    except Exception:  # an optimisation, never a reason to fail a finished run
        pass


def node_addresses() -> list[str]:
    """The IP address every live node of the current Ray cluster registered with."""
    import ray

    return [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]


# ------------------------------------------------------------------------------------------ reporting
class TuneReporter(Reporter):
    """Forwards a trial's progress to Ray Tune. Metrics are carried forward (each report holds the latest
    value of everything reported so far, as ``<stage>_<name>``), so schedulers and searchers find their
    metric in every result; the evaluate stage's metrics also appear under their own names (``mIoU``), and
    the export stage's whole-network MAdds as ``cost``. A stage checkpoint becomes a Tune checkpoint,
    holding that file and where it belongs in the trial directory, when ``checkpoint_every_s`` has passed
    since the last one (``tune.checkpoint_every_s``; 0: every one)."""

    def __init__(self, trial_dir: Path, checkpoint_every_s: float = 0.0) -> None:
        self.trial_dir = trial_dir
        self.carry: dict[str, float] = {}
        self.every_s = checkpoint_every_s
        self.last_copy = time.monotonic()  # the first copy waits one interval too: a retry redoes at most that

    def metrics(self, stage: str, metrics: dict[str, Any]) -> None:
        from ray import tune

        self._carry(stage, metrics)
        tune.report(dict(self.carry))

    def checkpoint(self, stage: str, path: Path, progress: dict[str, Any]) -> None:
        from ray import tune

        step = progress.get("step", progress.get("it", 0))
        self.carry[f"{stage}_step"] = float(step)
        if time.monotonic() - self.last_copy < self.every_s:
            # Tune copies every checkpoint it is given (a supernet with its optimiser state is tens of MB
            # at toy size); between copies the metrics still go out
            tune.report(dict(self.carry))
        else:
            # the staging folder sits next to the checkpoint, so the hard link never crosses file systems
            with tempfile.TemporaryDirectory(prefix=".tune-ckpt-", dir=Path(path).parent) as d:
                try:
                    os.link(path, Path(d) / "checkpoint.pt")  # no copy here; Tune copies it into its storage
                except OSError:
                    shutil.copyfile(path, Path(d) / "checkpoint.pt")
                rel = os.path.relpath(path, self.trial_dir)
                (Path(d) / "fnatune_state.json").write_text(json.dumps({"stage": stage, "path": rel, "step": step}))
                tune.report(dict(self.carry), checkpoint=tune.Checkpoint.from_directory(d))
            self.last_copy = time.monotonic()
        self._maybe_fail(stage, step, path)

    def _carry(self, stage: str, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                self.carry[f"{stage}_{k}"] = float(v)
                if stage == "evaluate":
                    self.carry[k] = float(v)
        if stage == "export" and "madds_paper_resolution" in metrics:
            self.carry["cost"] = float(metrics["madds_paper_resolution"]) / 1e9  # GMAdds, whole network

    def _maybe_fail(self, stage: str, step: int, path: Path) -> None:
        """Test hook (``FNATUNE_TEST_FAULT=search:4``): fail once at that checkpoint, after deleting the
        local copy of the checkpoint as a lost node would, so the retry must restore Tune's copy."""
        spec = os.environ.get(FAULT_ENV, "")
        want_stage, _, want_step = spec.partition(":")
        marker = self.trial_dir / ".fault_injected"
        if want_stage != stage or not want_step.isdigit() or step < int(want_step) or marker.exists():
            return
        marker.write_text(f"{stage}:{step}\n")
        Path(path).unlink(missing_ok=True)
        raise RuntimeError(f"injected fault in {stage} at step {step} ({FAULT_ENV})")


def restore_checkpoint(trial_dir: Path) -> dict[str, Any] | None:
    """Put the trial's last Tune checkpoint back into ``trial_dir`` when the local copy is gone (its node
    was lost, its disk wiped). A local checkpoint is kept: it is never older than Tune's copy of it."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        state = json.loads((Path(d) / "fnatune_state.json").read_text())
        target = trial_dir / state["path"]
        done = trial_dir / "stages" / state["stage"] / "done.json"
        state["restored"] = not target.exists() and not done.exists()
        if state["restored"]:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".restoring")
            shutil.copyfile(Path(d) / "checkpoint.pt", tmp)
            os.replace(tmp, target)
    return state


# ------------------------------------------------------------------------------------------ trials
@dataclass
class TrialPlan:
    """What :func:`run_trials` needs, all plain data (it travels to the trials)."""

    trainable: Callable[..., None]          # fnatune.experiment.run_trial(config, spec)
    spec: dict[str, Any]                    # passed to every trial unchanged
    param_space: dict[str, Any]             # {"key": {"grid": [...]} | {"uniform": [lo, hi]} | ...}
    resources: dict[str, float]             # per trial: cpu, gpu
    storage: Path                           # Tune storage (run_dir/tune)
    retries: int = 2
    keep_checkpoints: int = 2
    pending_timeout_s: float = 600.0
    search: dict[str, Any] | None = None    # {"method": "optuna", "metric": [...], "mode": [...], ...}
    asha: dict[str, Any] | None = None
    max_concurrent: int | None = None
    num_samples: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def _space(param_space: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in param_space.items():
        (kind, arg), = spec.items()
        out[key] = {"grid": lambda a: tune.grid_search(list(a)), "choice": lambda a: tune.choice(list(a)),
                    "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
                    "randint": lambda a: tune.randint(*a), "value": lambda a: a}[kind](arg)
    return out


def _search_alg(plan: TrialPlan) -> Any:
    if not plan.search:
        return None
    from optuna.samplers import NSGAIISampler, TPESampler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    s = plan.search
    sampler = NSGAIISampler(seed=s["seed"]) if s["sampler"] == "nsga2" else TPESampler(seed=s["seed"])
    metric, mode = s["metric"], s["mode"]
    alg = OptunaSearch(metric=metric if len(metric) > 1 else metric[0], mode=mode if len(mode) > 1 else mode[0],
                       sampler=sampler, seed=s["seed"])
    return ConcurrencyLimiter(alg, max_concurrent=plan.max_concurrent) if plan.max_concurrent else alg


def _scheduler(plan: TrialPlan) -> Any:
    if not plan.asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = plan.asha
    return ASHAScheduler(time_attr="search_epoch", metric=a["metric"], mode=a["mode"], max_t=a["max_t"],
                         grace_period=a["grace_period"], reduction_factor=a["reduction_factor"])


def _echo(text: str) -> None:
    print(text, flush=True)


def _callbacks_and_stopper(plan: TrialPlan) -> tuple[list[Any], Any, dict[str, Any]]:
    """A callback that prints one line per trial event (instead of Tune's tables and tracebacks) and watches
    for trials that wait for resources longer than the timeout; a stopper that then ends the experiment.
    Module-level classes with plain state: Tune pickles both into its experiment state."""
    watch = _Events(plan.retries, plan.pending_timeout_s)
    return [watch], _StopOnTimeout(watch), watch.state


class _Events(Callback):
    def __init__(self, retries: int, timeout: float) -> None:
        self.retries, self.timeout = retries, timeout
        self.state: dict[str, Any] = {"waiting_since": None, "timed_out": False}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _echo(f"tune: trial {trial.trial_id} started {_short(trial.config)}")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _echo(f"tune: trial {trial.trial_id} failed ({_first_line(trial)}); retrying from its last checkpoint "
              f"(attempt {trial.num_failures + 1} of {self.retries + 1})")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _echo(f"tune: trial {trial.trial_id} failed ({_first_line(trial)}); no retries left")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _echo(f"tune: trial {trial.trial_id} finished")

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        waiting = [t for t in trials if t.status == "PENDING"]
        busy = any(t.status == "RUNNING" for t in trials)
        if not waiting or busy:
            self.state["waiting_since"] = None
            return
        now = time.monotonic()
        self.state["waiting_since"] = self.state["waiting_since"] or now
        if now - self.state["waiting_since"] > self.timeout:
            self.state["timed_out"] = True


class _StopOnTimeout(Stopper):
    def __init__(self, watch: _Events) -> None:
        self.watch = watch

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return bool(self.watch.state["timed_out"])


def _short(config: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in config.items()) + ")" if config else ""


def _first_line(trial: Any) -> str:
    err = trial.error_file if getattr(trial, "error_file", None) else None
    if err and os.path.exists(err):
        lines = [line for line in Path(err).read_text().splitlines() if line.strip()]
        return lines[-1][:300] if lines else "error"
    return "error"


def _resource_error(plan: TrialPlan, cluster: dict[str, float], waited: float | None) -> FnatuneError:
    need = {k: v for k, v in plan.extra.get("dp_need", plan.resources).items() if v}
    have = {k: cluster.get(k.upper(), 0.0) for k in ("cpu", "gpu")}
    how = (f"no trial could start within tune.pending_timeout_s = {waited:g} s" if waited is not None else
           "this Ray cannot run even one trial")
    return FnatuneError(f"{how}: each trial asks for {need} (resources.* x resources.workers), the cluster has "
                        f"{have}. Lower resources.cpu/gpu/workers, add nodes (cluster.yaml), or raise "
                        f"tune.pending_timeout_s if the cluster is still scaling up.")


def run_trials(plan: TrialPlan, resume: bool = False) -> list[dict[str, Any]]:
    """Run (or, with ``resume``, restore and finish) the experiment; returns one summary per trial:
    ``{"trial_id", "config", "status", "metrics", "error"}``. Needs a :func:`ray_session`."""
    import ray
    from ray import tune

    cluster = dict(ray.cluster_resources())
    need = plan.extra.get("dp_need", plan.resources)
    if plan.extra.get("local") and any(v > cluster.get(k.upper(), 0.0) for k, v in need.items()):
        raise _resource_error(plan, cluster, None)  # nothing will ever join a local Ray: say so now
    trainable = tune.with_resources(tune.with_parameters(plan.trainable, spec=plan.spec), plan.resources)
    callbacks, stopper, watch = _callbacks_and_stopper(plan)
    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=str(plan.storage.resolve()), verbose=0, callbacks=callbacks, stop=stopper,
        failure_config=tune.FailureConfig(max_failures=plan.retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.keep_checkpoints))
    path = plan.storage.resolve() / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, param_space=_space(plan.param_space),
                                   resume_unfinished=True, resume_errored=True)
    else:
        if path.exists():
            shutil.rmtree(path)  # an experiment Tune cannot restore: the trials resume from their own directories
        tuner = tune.Tuner(trainable, param_space=_space(plan.param_space), run_config=run_config,
                           tune_config=tune.TuneConfig(
                               num_samples=plan.num_samples, search_alg=_search_alg(plan), scheduler=_scheduler(plan),
                               max_concurrent_trials=None if plan.search else plan.max_concurrent,
                               trial_dirname_creator=lambda t: t.trial_id))
    # Tune logs every failed attempt with a full traceback; our callback prints one line instead.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    grid = tuner.fit()
    if watch["timed_out"]:
        raise _resource_error(plan, cluster, plan.pending_timeout_s)
    out = []
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        out.append({"trial_id": trial_id, "config": dict(r.config or {}), "metrics": dict(r.metrics or {}),
                    "error": None if r.error is None else _error_text(r.error)})
    return out


def _error_text(err: BaseException) -> str:
    """The trial's own exception, not Ray's wrapper around it."""
    cause = getattr(err, "cause", None) or err.__cause__ or err
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__


def trial_context() -> dict[str, Any]:
    """Inside a trial: its id and name, the CPUs it was given and the node it runs on."""
    import ray
    from ray import tune

    ctx = tune.get_context()
    res = ctx.get_trial_resources()
    cpus = sum(b.get("CPU", 0.0) for b in res.bundles) if res is not None else 1.0
    rt = ray.get_runtime_context()
    return {"trial_id": ctx.get_trial_id(), "trial_name": ctx.get_trial_name(), "cpus": cpus,
            "node_id": rt.get_node_id(), "node_ip": ray.util.get_node_ip_address()}


# ------------------------------------------------------------------------------------------ Ray Train
def _dp_entry(config: dict[str, Any]) -> None:
    """First code of every data-parallel worker: the run's working directory and thread count, then the stage."""
    import torch

    cwd = config.pop("__cwd__", None)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(max(1, int(config.pop("__threads__", 1))))
    fn = config.pop("__fn__")
    fn(config)


def data_parallel(fn: Callable[[dict[str, Any]], None], payload: dict[str, Any], resources: Any, storage: Path) -> None:
    """Run ``fn(payload)`` on ``resources.workers`` Ray Train workers with an initialised process group
    (gloo on CPU workers, nccl on GPU workers). Raises a FnatuneError naming the first failure."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = resources.gpu > 0
    cpu = resources.cpu or 1.0
    per_worker = {"CPU": cpu, **({"GPU": resources.gpu} if gpu else {})}
    config = {**payload, "__fn__": fn, "__cwd__": os.getcwd(), "__threads__": cpu}
    trainer = TorchTrainer(
        _dp_entry, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=f"dp-{int(time.time() * 1000)}", storage_path=str(storage.resolve()),
                             failure_config=FailureConfig(max_failures=0)))
    try:
        trainer.fit()
    except Exception as e:
        raise FnatuneError(f"data-parallel {payload.get('stage', 'stage')} over {resources.workers} workers failed: "
                           f"{_error_text(e)}") from None
