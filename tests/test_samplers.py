"""The sweep's Optuna searcher must survive Tune's pickling (optuna 5.1's NSGA-II holds a thread lock)."""
from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import ray.cloudpickle as cloudpickle

from fnatune.samplers import NSGAIISampler
from fnatune.tune import OptunaPlan, Resources, TrialPlan, _search_alg


def _two_objective_trials(sampler: optuna.samplers.BaseSampler, n: int) -> list[tuple[float, float]]:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=n)
    return [tuple(t.params.values()) for t in study.trials]  # type: ignore[misc]


def test_nsga2_sampler_pickles_and_samples_like_a_fresh_one() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fresh = _two_objective_trials(NSGAIISampler(seed=3), 6)
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        copy = loads(dumps(NSGAIISampler(seed=3)))
        assert _two_objective_trials(copy, 6) == fresh  # same seed, same draws: the state survived
        loads(dumps(copy))  # a used sampler (caches filled) pickles too


def test_the_sweeps_searcher_pickles_for_both_samplers(tmp_path: Path) -> None:
    for sampler, metrics, modes in (("nsga2", ("metric", "cost"), ("max", "min")), ("tpe", ("metric",), ("max",))):
        plan = TrialPlan(trainable=lambda c, p: None, payload=None, storage=tmp_path, resources=Resources(cpu=1),
                         need=Resources(cpu=1), optuna=OptunaPlan(metrics=metrics, modes=modes, sampler=sampler, seed=3),
                         max_concurrent=2)
        alg = _search_alg(plan)
        assert cloudpickle.loads(cloudpickle.dumps(alg)) is not None
