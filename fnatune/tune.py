"""Ray Tune and Ray Train behind a small, typed interface; the only module that imports ``ray``.

It knows nothing of fnatune's stages, configs or run directories: it runs the trials of a
:class:`TrialPlan` and hands each one an opaque payload (what a trial is, and what happens around it, is
:mod:`fnatune.experiment`'s business).

* :func:`ray_session` starts a local Ray for the run, quietly and bound to 127.0.0.1 only, or joins
  the cluster at ``--address`` after checking that it answers (an unreachable address fails in seconds
  with the command that starts one).
* :func:`run_trials` runs a plan's trials with :class:`ray.tune.Tuner` (a grid, Optuna TPE / NSGA-II, ASHA,
  a concurrency limit, retries) and returns one :class:`TrialResult` per trial.
* Inside a trial: :func:`trial_info`, :func:`report` (metrics, optionally with a checkpoint folder that Tune
  copies into its storage) and :func:`last_checkpoint` (Tune's latest copy, on a retry or a restore).
* :func:`data_parallel` runs a function over N Ray Train workers with a torch process group.

Ray changes its reporting API every few releases (DESIGN §4); nothing outside this file needs to know.
Every use of Ray's private API is in the compatibility section at the end, written for Ray 2.60.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Read by Ray when it is imported: a driver whose output goes to a file or a pipe (a log, CI) gets the trials'
# lines as they are, without Ray's ANSI colours and "(run_trial pid=…)" prefixes (fnatune prefixes the lines
# of concurrent trials itself); a terminal keeps Ray's defaults.
if not os.isatty(1):
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")

from ray.tune import Callback, Stopper

from fnatune.errors import FnatuneError

LOCALHOST = "127.0.0.1"
EXPERIMENT = "experiment"
START_HINT = ("start one with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --node-ip-address=127.0.0.1 "
              "--port=6379` on this machine (the variable keeps Ray on 127.0.0.1), or "
              "`ray up cluster.yaml` for the GPU cluster; or leave out --address to run on a local Ray "
              "that fnatune starts and stops for you")
LOG_DRAIN_S = 0.3  # Ray's log monitor polls the workers' log files every 0.1 s


# ------------------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class Resources:
    cpu: float
    gpu: float = 0.0

    def asdict(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu}


@dataclass(frozen=True)
class Param:
    """One swept dimension: ``grid`` (every value) or ``choice`` over ``values``; ``uniform``,
    ``loguniform`` or ``randint`` (hi exclusive) over ``values = (lo, hi)``."""

    kind: Literal["grid", "choice", "uniform", "loguniform", "randint"]
    values: tuple[Any, ...]


@dataclass(frozen=True)
class OptunaPlan:
    """Optuna as Tune's searcher: one metric (TPE) or several (NSGA-II), each with its mode."""

    metrics: tuple[str, ...]
    modes: tuple[Literal["min", "max"], ...]
    sampler: Literal["tpe", "nsga2"]
    seed: int = 0


@dataclass(frozen=True)
class AshaPlan:
    """Asynchronous successive halving on ``metric``, with ``time_attr`` as the trials' clock."""

    time_attr: str
    metric: str
    mode: Literal["min", "max"]
    max_t: int
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class TrialPlan:
    """What :func:`run_trials` runs. ``trainable(config, payload)`` is called in every trial with its sampled
    ``config`` (the keys of ``params``) and the plan's ``payload`` (plain data; it travels to the trials).
    ``resources`` is what a trial's own process asks for, ``need`` what it holds in all, with any
    data-parallel workers it starts (what the cluster must be able to give)."""

    trainable: Callable[[dict[str, Any], Any], None]
    payload: Any
    storage: Path
    resources: Resources
    need: Resources
    params: Mapping[str, Param] = field(default_factory=dict)
    local: bool = True
    retries: int = 2
    keep_checkpoints: int = 2
    pending_timeout_s: float = 600.0
    optuna: OptunaPlan | None = None
    asha: AshaPlan | None = None
    max_concurrent: int | None = None
    num_samples: int = 1


@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    memory_gb: float | None = None  # Ray's memory monitor killed the trial's worker, which held this much (nan: unsaid)


def memory_kill(text: str) -> float | None:
    """When ``text`` (a trial's error) says Ray's memory monitor killed its worker: the memory that worker held,
    in GB (nan when the report does not say); None for any other error."""
    if not any(k in text for k in ("OutOfMemoryError", "running low on memory", "killed due to memory pressure")):
        return None
    m = re.search(r"memory used=([\d.]+)\s*GB", text)
    return float(m.group(1)) if m else float("nan")


class MemoryKilled(Exception):
    """Ray's memory monitor killed a trial's process in a way Tune does not treat as a trial failure (Ray 2.60
    raises its ``OutOfMemoryError`` for the trial's actor out of ``Tuner.fit``, which ends every trial).
    ``gb``: what the killed process held (nan: unsaid); ``pid``: that process, when the report names it."""

    def __init__(self, gb: float, pid: int | None) -> None:
        super().__init__(f"Ray's memory monitor killed process {pid} ({gb:.1f} GB)")
        self.gb, self.pid = gb, pid


def killed_pid(text: str) -> int | None:
    """The process a memory-monitor report says it killed (its "Selected to kill" entry, else the first pid it names)."""
    m = re.search(r"Selected to kill:.*?\bpid=(\d+)", text, re.S) or re.search(r"\bpid=(\d+)", text)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class TrialInfo:
    """Inside a trial: its id and name, the CPUs it was given and the node it runs on."""

    trial_id: str
    trial_name: str
    cpus: float
    node_id: str
    node_ip: str


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


def _forwarded_env() -> dict[str, str]:
    """Our own variables (the cache location) and MLflow's travel to the trials on every node."""
    return {k: v for k, v in os.environ.items() if k.startswith("FNATUNE_") or k == "MLFLOW_TRACKING_URI"}


@contextmanager
def ray_session(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None
                ) -> Iterator[dict[str, float]]:
    """Ray for the duration of the block; yields the cluster's total resources. Reuses a Ray that this
    process already initialised (and leaves it running)."""
    loopback = address is None or _on_loopback(address)
    _quiet_environment(local=loopback)
    import ray

    if ray.is_initialized():
        yield dict(ray.cluster_resources())
        return
    logging.getLogger("ray").setLevel(logging.ERROR)
    runtime_env = {"env_vars": {**_forwarded_env(), "RAY_CHDIR_TO_TRIAL_DIR": "0"}}
    if address is not None:
        _check_reachable(address)
        _compat_token_auth_if_required(address)
    started = time.monotonic()
    _echo(f"ray: joining the cluster at {address}" if address is not None else
          f"ray: starting a local Ray on {LOCALHOST} ({_count(num_cpus or os.cpu_count() or 1, 'CPU')}; a few seconds)")
    try:
        with _compat_loopback_resolution(loopback):
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
    resources = dict(ray.cluster_resources())
    _echo(f"ray: up in {time.monotonic() - started:.1f} s ({_count(resources.get('CPU', 0), 'CPU')}, "
          f"{_count(resources.get('GPU', 0), 'GPU')}); Tune is placing the trial(s)")
    try:
        yield resources
    finally:
        time.sleep(LOG_DRAIN_S)  # the log monitor forwards the trials' last lines before Ray goes
        if address is None:
            _compat_kill_autoscaler_monitor()
        ray.shutdown()


# ------------------------------------------------------------------------------------------ inside a trial
def trial_info() -> TrialInfo:
    import ray
    from ray import tune

    ctx = tune.get_context()
    res = ctx.get_trial_resources()
    cpus = sum(b.get("CPU", 0.0) for b in res.bundles) if res is not None else 1.0
    return TrialInfo(ctx.get_trial_id(), ctx.get_trial_name(), cpus, ray.get_runtime_context().get_node_id(),
                     ray.util.get_node_ip_address())


def report(metrics: Mapping[str, float], checkpoint_dir: Path | None = None) -> None:
    """Report ``metrics``; with ``checkpoint_dir``, Tune also copies that folder into its storage as the
    trial's newest checkpoint (the folder may go once this returns)."""
    from ray import tune

    if checkpoint_dir is None:
        tune.report(dict(metrics))
    else:
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))


@contextmanager
def last_checkpoint() -> Iterator[Path | None]:
    """The trial's newest checkpoint folder in Tune's storage (a retry's or a restored trial's), or None."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        yield None
        return
    with ckpt.as_directory() as d:
        yield Path(d)


# ------------------------------------------------------------------------------------------ trials
def _space(params: Mapping[str, Param]) -> dict[str, Any]:
    from ray import tune

    build = {"grid": lambda v: tune.grid_search(list(v)), "choice": lambda v: tune.choice(list(v)),
             "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
             "randint": lambda v: tune.randint(*v)}
    return {key: build[p.kind](p.values) for key, p in params.items()}


def _search_alg(plan: TrialPlan) -> Any:
    if plan.optuna is None:
        return None
    from optuna.samplers import TPESampler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from fnatune.samplers import NSGAIISampler

    o = plan.optuna
    sampler = NSGAIISampler(seed=o.seed) if o.sampler == "nsga2" else TPESampler(seed=o.seed)
    one = len(o.metrics) == 1
    alg = OptunaSearch(metric=o.metrics[0] if one else list(o.metrics), mode=o.modes[0] if one else list(o.modes),
                       sampler=sampler, seed=o.seed)
    return ConcurrencyLimiter(alg, max_concurrent=plan.max_concurrent) if plan.max_concurrent else alg


def _scheduler(plan: TrialPlan) -> Any:
    if plan.asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = plan.asha
    return ASHAScheduler(time_attr=a.time_attr, metric=a.metric, mode=a.mode, max_t=a.max_t,
                         grace_period=a.grace_period, reduction_factor=a.reduction_factor)


def _count(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def _echo(text: str) -> None:
    print(text, flush=True)


class _Events(Callback):
    """One line per trial event (instead of Tune's tables and tracebacks), and a watch for trials that wait
    for resources longer than the timeout. Plain state: Tune pickles it into its experiment state."""

    def __init__(self, retries: int, timeout: float, single: bool = False) -> None:
        self.retries, self.timeout, self.single = retries, timeout, single
        self.state: dict[str, Any] = {"waiting_since": None, "timed_out": False, "memory": {}}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _echo(f"tune: trial {trial.trial_id} started {_short(trial.config)}")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        gb = memory_kill(_error_of(trial))
        if gb is not None:
            # the same step would need the same memory again: no retry, the driver says what to lower
            self.state["memory"][trial.trial_id] = gb
            _echo(f"tune: trial {trial.trial_id} was killed by Ray's memory monitor{_gb(gb)}"
                  + ("; not retried" if self.single else f"; retrying (attempt {trial.num_failures + 1} of "
                                                          f"{self.retries + 1})"))
            return
        _echo(f"tune: trial {trial.trial_id} failed ({_first_line(trial)}); retrying from its last checkpoint "
              f"(attempt {trial.num_failures + 1} of {self.retries + 1})")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        gb = memory_kill(_error_of(trial))
        if gb is not None:
            self.state["memory"][trial.trial_id] = gb
            _echo(f"tune: trial {trial.trial_id} was killed by Ray's memory monitor{_gb(gb)}")
            return
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
        # a single trial killed for memory ends the experiment instead of spending its retries on the same step
        return bool(self.watch.state["timed_out"]) or (self.watch.single and bool(self.watch.state["memory"]))


def _short(config: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in config.items()) + ")" if config else ""


def _error_of(trial: Any) -> str:
    err = trial.error_file if getattr(trial, "error_file", None) else None
    return Path(err).read_text() if err and os.path.exists(err) else ""


def _first_line(trial: Any) -> str:
    lines = [line for line in _error_of(trial).splitlines() if line.strip()]
    return lines[-1][:300] if lines else "error"


def _gb(gb: float) -> str:
    return "" if gb != gb else f" (its worker held {gb:.1f} GB)"


def _resource_error(plan: TrialPlan, cluster: dict[str, float], waited: float | None) -> FnatuneError:
    need = {k: v for k, v in plan.need.asdict().items() if v}
    have = {k: cluster.get(k.upper(), 0.0) for k in ("cpu", "gpu")}
    how = (f"no trial could start within tune.pending_timeout_s = {waited:g} s" if waited is not None else
           "this Ray cannot run even one trial")
    return FnatuneError(f"{how}: each trial asks for {need} (resources.* x resources.workers), the cluster has "
                        f"{have}. Lower resources.cpu/gpu/workers, add nodes (cluster.yaml), or raise "
                        f"tune.pending_timeout_s if the cluster is still scaling up.")


def run_trials(plan: TrialPlan, resume: bool = False) -> list[TrialResult]:
    """Run (or, with ``resume``, restore and finish) the plan's experiment in ``plan.storage``; returns one
    :class:`TrialResult` per trial. Needs a :func:`ray_session`."""
    import ray
    from ray import tune

    cluster = dict(ray.cluster_resources())
    if plan.local and any(v > cluster.get(k.upper(), 0.0) for k, v in plan.need.asdict().items()):
        raise _resource_error(plan, cluster, None)  # nothing will ever join a local Ray: say so now
    trainable = tune.with_resources(tune.with_parameters(plan.trainable, payload=plan.payload),
                                    plan.resources.asdict())
    watch = _Events(plan.retries, plan.pending_timeout_s, single=plan.num_samples == 1 and not plan.params)
    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=str(plan.storage.resolve()), verbose=0, callbacks=[watch],
        stop=_StopOnTimeout(watch), failure_config=tune.FailureConfig(max_failures=plan.retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.keep_checkpoints))
    path = plan.storage.resolve() / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, param_space=_space(plan.params),
                                   resume_unfinished=True, resume_errored=True)
    else:
        if path.exists():
            shutil.rmtree(path)  # an experiment Tune cannot restore: the trials resume from their own directories
        tuner = tune.Tuner(trainable, param_space=_space(plan.params), run_config=run_config,
                           tune_config=tune.TuneConfig(
                               num_samples=plan.num_samples, search_alg=_search_alg(plan), scheduler=_scheduler(plan),
                               max_concurrent_trials=None if plan.optuna else plan.max_concurrent,
                               trial_dirname_creator=lambda t: t.trial_id))
    # Tune logs every failed attempt with a full traceback; our callback prints one line instead.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Ctrl-C: Tune's own handler would end fit() quietly, as if the trials had finished; without it the
    # KeyboardInterrupt reaches the CLI, which exits 130 with the resume command (the stages' checkpoints
    # and Tune's periodic experiment snapshots are what a resume continues from)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        grid = tuner.fit()
    except Exception as e:
        text = _full_text(e)
        gb = memory_kill(text)
        if gb is None:
            raise
        raise MemoryKilled(gb, killed_pid(text)) from None
    if watch.state["timed_out"]:
        raise _resource_error(plan, cluster, plan.pending_timeout_s)
    out = []
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        text = "" if r.error is None else _full_text(r.error)
        gb = watch.state["memory"].get(trial_id, memory_kill(text))
        out.append(TrialResult(trial_id, dict(r.config or {}), dict(r.metrics or {}),
                               None if r.error is None else _error_text(r.error), gb))
    return out


def _full_text(err: BaseException) -> str:
    """Every message in ``err``'s chain (Ray wraps the cause; the memory monitor's report is in one of them)."""
    out, seen, e = [], set(), err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(f"{type(e).__name__}: {e}")
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return "\n".join(out)


def _error_text(err: BaseException) -> str:
    """The trial's own exception, not Ray's wrapper around it."""
    cause = getattr(err, "cause", None) or err.__cause__ or err
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__


# ------------------------------------------------------------------------------------------ Ray Train
def _dp_entry(config: dict[str, Any]) -> None:
    """First code of every data-parallel worker: the run's working directory and thread count, then the function."""
    import torch

    if config["cwd"] and os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    torch.set_num_threads(max(1, int(config["threads"])))
    config["fn"](config["payload"])


def data_parallel(fn: Callable[[Any], None], payload: Any, workers: int, per_worker: Resources, storage: Path,
                  what: str = "stage") -> None:
    """Run ``fn(payload)`` on ``workers`` Ray Train workers with an initialised torch process group (gloo on
    CPU workers, nccl on GPU workers). Raises a FnatuneError naming the first failure."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = per_worker.gpu > 0
    resources = {"CPU": per_worker.cpu, **({"GPU": per_worker.gpu} if gpu else {})}
    config = {"fn": fn, "payload": payload, "cwd": os.getcwd(), "threads": per_worker.cpu}
    trainer = TorchTrainer(
        _dp_entry, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=f"dp-{int(time.time() * 1000)}", storage_path=str(storage.resolve()),
                             failure_config=FailureConfig(max_failures=0)))
    try:
        trainer.fit()
    except Exception as e:
        raise FnatuneError(f"data-parallel {what} over {workers} workers failed: {_error_text(e)}") from None


# ------------------------------------------------------------------------------------------ compatibility
# Ray's private API, written for Ray 2.60. Each use degrades to Ray's ordinary behaviour when it moves.
@contextmanager
def _compat_loopback_resolution(loopback: bool) -> Iterator[None]:
    """While Ray starts or joins on the loopback, switch off its "cluster" IP resolution in-process too (the
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` of :func:`_quiet_environment`, for a ``ray`` imported before it
    was set): otherwise Ray replaces 127.0.0.1 with the machine's interface address."""
    try:
        from ray._private import ray_constants
    except ImportError:
        yield
        return
    was = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if loopback and was is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if was is not None:
            ray_constants.ENABLE_RAY_CLUSTER = was


def _compat_token_auth_if_required(address: str) -> None:
    """Ray (2.52+) turns token authentication on for the clusters ``ray.init()`` starts (writing a token to
    ``~/.ray/auth_token``) and for ``ray start`` when a token exists, but a driver joining an explicit address
    never turns it on by itself: it is then refused with a bare "failed to connect" after 20 s. Turning it on
    whenever a token exists is wrong too: a cluster without authentication then drops the driver's actors.
    So ask the cluster: a GCS client without a token is refused at once by a cluster that needs one, and
    only then is the token used (an error that says where to put it if there is none)."""
    if "RAY_AUTH_MODE" in os.environ or address == "auto" or "://" in address:
        return  # the user's explicit choice, or one Ray makes itself (auto) or through its client (ray://)
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication
        return
    host, port = _host_port(address)
    try:
        GcsClient(address=f"{host}:{port}")
        return  # answered without a token
    except AuthenticationError:
        pass
    except Exception:  # not a GCS we can ask; leave it to ray.init
        return
    if not maybe_enable_token_auth_if_token_available(warn_if_disabled=False):
        raise FnatuneError(f"the Ray cluster at {address} requires token authentication, and no token is at hand: "
                           "copy the cluster's token (`ray get-auth-token` on its head) to ~/.ray/auth_token, or "
                           "point RAY_AUTH_TOKEN_PATH at it")


def _compat_kill_autoscaler_monitor() -> None:
    """A local Ray has nothing to autoscale, but its head still runs the autoscaler's monitor, which sits
    out the whole second of grace ``ray.shutdown`` gives it after SIGTERM. Killing it first saves that
    second on every local run. Any surprise just leaves the usual shutdown."""
    try:
        from ray._private import ray_constants, worker

        node = worker._global_node
        for info in (node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node else []):
            info.process.kill()
            info.process.wait(timeout=5)
    except Exception:  # an optimisation, never a reason to fail a finished run
        return
