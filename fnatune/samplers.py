"""Optuna samplers that survive Tune's pickling.

Tune pickles its searcher, sampler included, into the experiment state (``tune.Tuner`` does it before the
first trial, and ``fnatune resume`` reads it back). optuna 5.1's genetic samplers (NSGA-II) hold a
``threading.Lock`` and no ``__getstate__`` that drops it, so a sweep died at once with
``TypeError: cannot pickle '_thread.lock' object``. The subclass here drops the lock when pickled and makes
a fresh one when unpickled; with optuna versions that have no lock it changes nothing.
"""
from __future__ import annotations

import threading
from typing import Any

from optuna.samplers import NSGAIISampler as _OptunaNSGAII


class NSGAIISampler(_OptunaNSGAII):
    """optuna's NSGA-II, picklable whatever optuna's version."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()  # unused by optuna versions without one
