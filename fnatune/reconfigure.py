"""Settings changed when a run resumes: ``fnatune resume RUN --set key=value``.

The usual reason is a run that stopped for lack of memory or time (Ray's memory monitor killed the trial, a
node had fewer GPUs than asked): the user wants to continue with a smaller batch, more recomputation, another
device, without losing the stages that finished.

A setting either says *how* a run is carried out or shapes *what* a stage computes:

- How (:data:`HOW_KEYS`): the device, the CPUs and GPUs a trial asks for, Tune's retries and checkpoint copies,
  data-loader workers, how much of the arch step is recomputed (the same gradients), how often checkpoints and
  logs are written. A change applies from the next step on; nothing starts over.
- What (every other key): each is read first by one stage (:func:`first_reader`: ``search.*`` by the search,
  ``search.init`` already by the super net's remapping, ``finetune.*`` by the fine-tune, ``finetune.init`` by
  the target's remapping, ``remap.*`` by the super net, anything outside these sections, such as the data, the
  seed network, the space or the random seed, by the first stage). A change is accepted while that stage has not
  finished. If it has started, it starts over: its directory is set aside under ``<run>/set_aside/`` (nothing is
  deleted) and its MLflow stage run is ended, so a new one records the new attempt. A change that reaches a
  finished stage is refused, naming the stage: its result would no longer match the config (start a new run).

A sweep or a set of variants takes only *how* changes: each trial's config is its own (the knobs it was given).
Every accepted change is recorded in the run's state (``resume_changes``) and as a tag of its MLflow run.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any

from fnatune.config import PipelineCfg, apply_overrides, flatten, validate
from fnatune.errors import FnatuneError
from fnatune.rundir import RunDir

#: keys (or, ending in ".", sections) that change how a run is carried out, not what its stages compute
HOW_KEYS = ("device", "resources.cpu", "resources.gpu", "tune.", "data.num_workers", "search.recompute_mixed",
            "search.checkpoint_every", "finetune.checkpoint_every", "finetune.log_every", "pretrain.cache_dir")

#: the stages that read a key first, most specific prefix first; the first of them in the run's flow restarts
READERS = (("search.init", ("supernet",)), ("search.", ("search",)), ("finetune.init", ("target",)),
           ("finetune.", ("finetune",)), ("evaluate.", ("evaluate",)), ("export.", ("export",)),
           ("remap.", ("supernet", "target")), ("arch", ("arch",)))


def _matches(key: str, prefix: str) -> bool:
    return key.startswith(prefix) if prefix.endswith(".") else key == prefix or key.startswith(prefix + ".")


def is_how(key: str) -> bool:
    """Whether ``key`` only says how the run is carried out (see the module docstring)."""
    return any(_matches(key, p) for p in HOW_KEYS)


def first_reader(key: str, flow: list[str]) -> str:
    """The stage of ``flow`` (the run's stage names, in order) whose result ``key`` shapes first."""
    for prefix, stages in READERS:
        if _matches(key, prefix):
            return next((s for s in flow if s in stages), flow[0])
    return flow[0]


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    restarts: str | None  # the stage that starts over (None: a how change, or the stage had not started)

    def describe(self) -> str:
        what = (f"stage '{self.restarts}' starts over (its work so far is set aside)" if self.restarts else
                "applies from the next step" if is_how(self.key) else "applies when its stage runs")
        return f"{self.key}: {self.old!r} -> {self.new!r}; {what}"


def _started(run: RunDir, stage: str) -> bool:
    d = run.stage_dir(stage)
    return d.is_dir() and any(d.iterdir())


def plan_changes(cfg: PipelineCfg, run: RunDir, overrides: list[str]) -> tuple[PipelineCfg, list[Change]]:
    """``cfg`` (the run's config) with ``overrides`` applied and validated, and what each change does to ``run``;
    one clear line (FnatuneError) for a change that cannot be made."""
    from fnatune.stages import stages_for

    source = f"{run.config_path} (after --set overrides)"
    new = validate(apply_overrides(cfg.model_dump(mode="json", by_alias=True), overrides), source)
    before, after = flatten(cfg), flatten(new)
    keys = [k for k in after if before.get(k) != after[k]] + [k for k in before if k not in after]
    if cfg.sweep != new.sweep or cfg.variants != new.variants:
        raise FnatuneError("--set: a resume cannot change a run's sweep or variants; start a new run for that")
    flow = [name for name, _ in stages_for(cfg)]
    if [name for name, _ in stages_for(new)] != flow:
        raise FnatuneError(f"--set: the change turns the run's stages from {', '.join(flow)} into "
                           f"{', '.join(n for n, _ in stages_for(new))}; start a new run for that")
    changes: list[Change] = []
    single = cfg.sweep is None and not cfg.variants
    for key in keys:
        old, value = before.get(key), after.get(key)
        if is_how(key):
            changes.append(Change(key, old, value, None))
            continue
        if key.startswith("tracking."):
            raise FnatuneError(f"--set {key}: the run's MLflow runs exist already, in the store and experiment it "
                               f"started with; for the same store at a new address use --tracking-uri, and "
                               f"`fnatune sync` sends what waited")
        if not single:
            raise FnatuneError(f"--set {key}: a sweep's or variants' trials keep their own configs, so a resume "
                               f"changes only how they run ({', '.join(p.rstrip('.') for p in HOW_KEYS)}); start "
                               f"a new run to change {key}")
        stage = first_reader(key, flow)
        if run.is_done(stage):
            raise FnatuneError(f"--set {key}: stage '{stage}', whose result it shapes, has finished, so that result "
                               f"would not match the config; start a new run to change it")
        changes.append(Change(key, old, value, stage if _started(run, stage) else None))
    return new, changes


def apply_changes(cfg: PipelineCfg, run: RunDir, changes: list[Change], source: str) -> None:
    """Write the new config into ``run``, set aside the directories of the stages that start over, and record the
    changes in the run's state (the MLflow tag is set when the run's tracking starts: :func:`tag_changes`)."""
    if not changes:
        return
    state = run.state()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for stage in sorted({c.restarts for c in changes if c.restarts}):
        aside, n = run.path / "set_aside" / f"{stage}-{stamp}", 1
        while aside.exists():  # two resumes within a second
            aside, n = run.path / "set_aside" / f"{stage}-{stamp}-{n}", n + 1
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run.stage_dir(stage)), str(aside))
        state.setdefault("stage_runs_set_aside", {})[stage] = state.get("stage_runs", {}).pop(stage, None)
    state.setdefault("resume_changes", []).append(
        {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changes": [c.describe() for c in changes]})
    state["resume_changes_untagged"] = True
    run.write_state(state)
    run.write_config(cfg, source)


def tag_changes(run: RunDir, tracker: Any, parent: str) -> None:
    """Tag the run's MLflow run with the changes made at resumes (once per resume), and end the stage runs of the
    stages that started over (their attempt ended when the run stopped)."""
    state = run.state()
    if not state.pop("resume_changes_untagged", False):
        return
    history = state.get("resume_changes", [])
    tracker.set_tags(parent, {"fnatune.resume_changes": "; ".join(
        f"{h['time']}: {', '.join(h['changes'])}" for h in history)[:5000]})
    for stage, run_id in (state.pop("stage_runs_set_aside", None) or {}).items():
        if run_id:
            tracker.set_tags(run_id, {"fnatune.set_aside": f"stage '{stage}' started over after a change at resume"})
            tracker.end_run(run_id, "KILLED")
    run.write_state(state)
