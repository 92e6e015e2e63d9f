"""The FNA++ architecture search (FNA_SPEC §5): alternating weight and arch steps, resumable exactly.

Call order::

    searcher = Searcher(model, supernet, loss_fn, arch_stream, weight_stream, cost_table, cfg.search, workdir,
                        seed=cfg.seed)
    result = searcher.run()          # resumes from workdir/checkpoint.pt when it exists

* A **weight step** samples one candidate per searchable layer (uniformly during the warm-up epochs,
  then from softmax(alpha / sample_temperature)), runs that single path, and updates the weights only;
  alpha is frozen. Loss = task loss.
* An **arch step** runs every candidate, mixed by softmax(alpha / temperature), first order, with the
  weights frozen, and updates alpha only. Loss = task + lambda * log_tau(gamma * E[cost]).
* With ``temperature_final`` set (not FNA), the mixing temperature of the arch steps and of E[cost] falls
  geometrically from ``temperature`` at the first searching epoch to ``temperature_final`` at the last.
* At the end, the arch is derived as ``derive`` says (:mod:`fnatune.derive`): FNA's argmax per layer, or the best
  of the most probable paths scored on the arch split.
* One epoch = ``steps_per_epoch`` weight steps (FNA: ``repeat`` x the number of batches of the arch split).
  After the warm-up each cycle is ``arch_steps`` arch steps followed by ``weight_steps`` weight steps.

The settings are the pipeline's ``search`` section (:class:`~fnatune.config.sections.SearchCfg`) itself.
``model`` is whatever computes the task loss (an mmseg segmentor, a plain torch net); it must contain
``supernet``, whose mode the searcher switches with ``use_path``/``use_mixed``. ``loss_fn(batch)`` runs
``model`` on one batch and returns the scalar task loss.

The checkpoint (:class:`~fnatune.loop.LoopCheckpoint`) holds the model (weights and alpha), both
optimisers, the step counters, every RNG state (torch, CUDA, NumPy, Python and the path sampler) and the
two streams' positions, so a run killed at any step and resumed from its last checkpoint ends with
bit-identical alpha on the CPU.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.config.sections import CostCfg, DeriveCfg, SearchCfg
from fnatune.derive import Derivation, derive
from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json
from fnatune.loop import (
    LoopCheckpoint,
    NonFiniteLossError,
    all_finite,
    build_optimizer,
    clip_gradients,
    plain,
    rng_state,
    set_rng_state,
)
from fnatune.nets import SuperNet
from fnatune.schedule import LRSchedule, set_lr

#: the search's current kind of step ({"kind": "arch" | "weight"}), in its work folder
STEP_FILE = "step.json"

__all__ = ["STEP_FILE", "NonFiniteLossError", "SearchObserver", "SearchResult", "Searcher", "alpha_entropy", "cost_term"]


class SearchObserver:
    """Hooks for progress and tracking; every method is optional."""

    def on_step(self, info: dict[str, Any]) -> None: ...

    def on_epoch(self, epoch: int, metrics: dict[str, float], probabilities: list[list[float]], arch: Arch) -> None: ...

    def on_checkpoint(self, path: Path, progress: dict[str, Any]) -> None: ...


@dataclass
class SearchResult:
    arch: Arch
    probabilities: list[list[float]]
    history: list[dict[str, Any]]
    checkpoint: Path
    derivation: Derivation | None = None


def alpha_entropy(probabilities: Sequence[Tensor]) -> float:
    """Mean entropy (nats) of the per-layer op distributions: log(n) when uniform, 0 when decided."""
    ents = [float(-(p * p.clamp_min(1e-12).log()).sum()) for p in probabilities]
    return sum(ents) / max(len(ents), 1)


def cost_term(cost: Tensor, c: CostCfg) -> Tensor:
    """The search's cost term before lambda: ``log_tau(gamma * C)``, or ``|log_tau(C / target)|``."""
    if c.target is None:
        return torch.log(c.gamma * cost) / math.log(c.log_base)
    return (torch.log(cost / c.target) / math.log(c.log_base)).abs()


def _grad_norms(alphas: Sequence[Tensor], by_cost: Sequence[Tensor | None]) -> dict[str, float]:
    """L2 norms of alpha's gradient from the task alone and from the cost term alone (the total minus the cost
    term's), before clipping: the two forces of an arch step, for the epoch's ``cost_grad_share``."""
    task = cost = 0.0
    for a, c in zip(alphas, by_cost):
        g = a.grad if a.grad is not None else torch.zeros_like(a)
        c = c if c is not None else torch.zeros_like(a)
        task += float((g - c).square().sum())
        cost += float(c.square().sum())
    return {"alpha_grad_task": math.sqrt(task), "alpha_grad_cost": math.sqrt(cost)}


class Searcher:
    """Runs (or resumes) one FNA++ search in ``workdir``; see the module docstring."""

    def __init__(self, model: nn.Module, supernet: SuperNet, loss_fn: Callable[[Any], Tensor],
                 arch_stream: Any, weight_stream: Any, cost_table: Any, settings: SearchCfg,
                 workdir: str | Path, observer: SearchObserver | None = None, seed: int = 1,
                 path_hook: Callable[[list[int]], list[int]] | None = None, dp: Any = None) -> None:
        if not any(m is supernet for m in model.modules()):
            raise FnatuneError("the search model must contain the SuperNet it searches")
        self.model, self.supernet, self.loss_fn = model, supernet, loss_fn
        supernet.recompute_mixed = settings.recompute_mixed
        self.arch_stream, self.weight_stream = arch_stream, weight_stream
        self.cost, self.s, self.seed = cost_table, settings, seed
        self.workdir = Path(workdir)
        self.observer = observer or SearchObserver()
        self.dp = dp  # a fnatune.distributed.DataParallel: one path for all, averaged gradients
        self.path_hook = path_hook or (dp.broadcast_path if dp is not None else None)
        if dp is not None and not dp.is_main:
            self.observer = SearchObserver()  # progress, tracking and Tune reports come from rank 0
        self.ckpt = LoopCheckpoint(self.workdir, "fnatune-search", dp)
        self.alphas = supernet.arch_parameters()
        arch_ids = {id(a) for a in self.alphas}
        self.weights = [p for p in model.parameters() if id(p) not in arch_ids]
        self.weight_opt = build_optimizer(self.weights, settings.weight_optim)
        self.arch_opt = build_optimizer(self.alphas, settings.arch_optim)
        self.steps_per_epoch = settings.steps_per_epoch or settings.repeat * len(arch_stream)
        lr = settings.weight_lr
        self.schedule = LRSchedule(  # milestones are epochs in the config, weight iterations here
            base_lr=settings.weight_optim.lr, total_iters=settings.epochs * self.steps_per_epoch, policy=lr.policy,
            warmup_iters=(lr.warmup_iters if lr.warmup_epochs is None else round(lr.warmup_epochs * self.steps_per_epoch)),
            warmup_ratio=lr.warmup_ratio, milestones=[m * self.steps_per_epoch for m in lr.milestones], gamma=lr.gamma,
            power=lr.power, min_lr=lr.min_lr)
        self.gen = torch.Generator()
        self.progress: dict[str, Any] = {"epoch": 0, "w_in_epoch": 0, "cycle_pos": 0, "step": 0,
                                         "weight_iter": 0, "arch_iter": 0, "done": False}
        self.acc: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.ckpt.path

    def _streams(self) -> dict[str, Any]:
        return {"arch": self.arch_stream.state_dict(), "weight": self.weight_stream.state_dict()}

    def save_checkpoint(self) -> Path:
        path = self.ckpt.save(
            full=lambda: {
                "model": self.model.state_dict(),
                "weight_opt": self.weight_opt.state_dict(), "arch_opt": self.arch_opt.state_dict(),
                "progress": dict(self.progress), "acc": dict(self.acc), "history": self.history,
                "rng": rng_state(self.gen), "streams": self._streams(),
                "settings": plain(self.s.model_dump(mode="json", by_alias=True)),
            },
            own=lambda: {"rng": rng_state(self.gen), "streams": self._streams()})
        self.observer.on_checkpoint(path, dict(self.progress))
        return path

    def load_checkpoint(self) -> bool:
        """Restore from ``workdir/checkpoint.pt`` if present; returns whether it did."""
        loaded = self.ckpt.load()
        if loaded is None:
            return False
        state, own = loaded
        self.model.load_state_dict(state["model"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.progress, self.acc, self.history = dict(state["progress"]), dict(state["acc"]), list(state["history"])
        mine = own or state  # a worker other than rank 0 continues from its own RNGs and data position
        self.arch_stream.load_state_dict(mine["streams"]["arch"])
        self.weight_stream.load_state_dict(mine["streams"]["weight"])
        set_rng_state(mine["rng"], self.gen)
        return True

    # ------------------------------------------------------------------------------ steps
    def _require(self, weights: bool) -> None:
        """Freeze one side. Only on a switch: toggling ~10^3 flags every step is measurable on small inputs."""
        if getattr(self, "_grad_side", None) == weights:
            return
        self._grad_side = weights
        if self.dp is None or self.dp.is_main:  # what a run killed from outside (for memory) was doing; a plain
            # write (no fsync): it is a hint for an error message, read only after the process is gone
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / STEP_FILE).write_text(json.dumps({"kind": "weight" if weights else "arch"}))
        for p in self.weights:
            p.requires_grad_(weights)
        for a in self.alphas:
            a.requires_grad_(not weights)

    def _check(self, loss: Tensor, kind: str) -> None:
        if not all_finite(loss, self.dp):
            raise NonFiniteLossError(
                f"non-finite {kind} loss ({float(loss.detach())}) at step {self.progress['step']} "
                f"(epoch {self.progress['epoch']}); the search stopped; last good checkpoint: {self.ckpt.describe()}")

    def weight_step(self, warmup: bool) -> dict[str, float]:
        self._require(weights=True)
        path = self.supernet.sample_path(self.gen, uniform=warmup, temperature=self.s.sample_temperature)
        if self.path_hook is not None:
            path = self.path_hook(path)
        self.supernet.use_path(path)
        if self.dp is not None:
            self.dp.broadcast_buffers(self.model)
        lr = self.schedule.lr_at(self.progress["weight_iter"])
        set_lr(self.weight_opt, lr)
        loss = self.loss_fn(self.weight_stream.next())
        self._check(loss, "weight")
        self.weight_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.dp is not None:
            self.dp.average_grads(self.weights)
        clip_gradients(self.weights, self.s.weight_optim.grad_clip)
        self.weight_opt.step()
        self.weight_opt.zero_grad(set_to_none=True)
        self.progress["weight_iter"] += 1
        return {"weight_loss": float(loss.detach()), "lr": lr}

    def temperature_at(self, epoch: int) -> float:
        """The mixing temperature of ``epoch``: ``temperature`` throughout (FNA), or, with ``temperature_final``,
        geometric from ``temperature`` at the first searching epoch to ``temperature_final`` at the last."""
        s = self.s
        if s.temperature_final is None:
            return s.temperature
        searching = s.epochs - s.warmup_epochs
        t = min(max(epoch - s.warmup_epochs, 0) / max(searching - 1, 1), 1.0)
        return s.temperature * (s.temperature_final / s.temperature) ** t

    @property
    def temperature(self) -> float:
        """The mixing temperature now (of the epoch in progress; after the last one, the last one's)."""
        return self.temperature_at(min(self.progress["epoch"], self.s.epochs - 1))

    def arch_step(self) -> dict[str, float]:
        self._require(weights=False)
        temperature = self.temperature
        self.supernet.use_mixed(temperature)
        if self.dp is not None:
            self.dp.broadcast_buffers(self.model)
        task = self.loss_fn(self.arch_stream.next())
        cost = self.cost.expected(self.alphas, temperature)
        penalty = self.s.cost.lam * self.cost_term(cost)
        loss = task + penalty
        self._check(loss, "arch")
        self.arch_opt.zero_grad(set_to_none=True)
        # the cost term's own gradient (a small graph of alpha alone), so the epoch can say which of the two
        # terms moves alpha; it leaves the step's arithmetic as it was
        by_cost = (torch.autograd.grad(penalty, self.alphas, retain_graph=True, allow_unused=True)
                   if penalty.requires_grad else [None] * len(self.alphas))
        loss.backward()
        norms = _grad_norms(self.alphas, by_cost)
        if self.dp is not None:
            self.dp.average_grads(self.alphas)
        clip_gradients(self.alphas, self.s.arch_optim.grad_clip)
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
        self.progress["arch_iter"] += 1
        return {"arch_loss": float(loss.detach()), "arch_task_loss": float(task.detach()),
                "expected_cost": float(cost.detach()), **norms}

    def cost_term(self, cost: Tensor) -> Tensor:
        """log_tau(gamma * C) (FNA_SPEC §5.3, §13.1), or |log_tau(C / target)| when a target cost is set
        (gamma scales both C and the target there, so it cancels)."""
        return cost_term(cost, self.s.cost)

    # ------------------------------------------------------------------------------ loop
    def run(self, max_steps: int | None = None) -> SearchResult | None:
        """Run to the end (resuming first if a checkpoint exists). With ``max_steps``, stop after that many
        steps of this call, checkpoint and return None (used by step-wise drivers)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.load_checkpoint():
            torch.manual_seed(self.seed)
            self.gen.manual_seed(self.seed)
        self.model.train()
        pr, taken, cycle = self.progress, 0, self.s.arch_steps + self.s.weight_steps
        t0 = time.perf_counter()
        while pr["epoch"] < self.s.epochs:
            searching = pr["epoch"] >= self.s.warmup_epochs
            while pr["w_in_epoch"] < self.steps_per_epoch:
                if max_steps is not None and taken >= max_steps:
                    self.save_checkpoint()
                    return None
                if searching and pr["cycle_pos"] < self.s.arch_steps:
                    out, kind = self.arch_step(), "arch"
                else:
                    out, kind = self.weight_step(warmup=not searching), "weight"
                    pr["w_in_epoch"] += 1
                pr["cycle_pos"] = (pr["cycle_pos"] + 1) % cycle if searching else 0
                pr["step"] += 1
                taken += 1
                for k, v in out.items():
                    self.acc[k] = self.acc.get(k, 0.0) + v
                    self.acc["n_" + k] = self.acc.get("n_" + k, 0.0) + 1
                self.observer.on_step({"kind": kind, "epoch": pr["epoch"], "epochs": self.s.epochs,
                                       "step_in_epoch": pr["w_in_epoch"], "steps_per_epoch": self.steps_per_epoch,
                                       "elapsed": time.perf_counter() - t0, **out})
                if self.s.checkpoint_every and pr["step"] % self.s.checkpoint_every == 0:
                    self.save_checkpoint()
            self._end_epoch()
        pr["done"] = True
        path = self.save_checkpoint()
        probs = [p.tolist() for p in self.supernet.probabilities(self.temperature)]
        derivation = self.derive()
        return SearchResult(derivation.arch, probs, self.history, path, derivation)

    def derive(self, settings: DeriveCfg | None = None) -> Derivation:
        """The final arch by ``settings`` (default: the search's ``derive`` section). ``paths`` reads its batches
        from the arch split where the search left it, so a run resumed after its last checkpoint derives the same
        arch; the super net's weights and buffers are left as they are."""
        reduce = None
        if self.dp is not None:
            reduce = self.dp.average_values
        return derive(settings or self.s.derive, self.supernet, model=self.model, loss_fn=self.loss_fn,
                      next_batch=self.arch_stream.next, cost_table=self.cost, cost=self.s.cost,
                      cost_term=self.cost_term, reduce=reduce)

    def _end_epoch(self) -> None:
        pr = self.progress
        temperature = self.temperature
        probs_t = [p.detach().cpu() for p in self.supernet.probabilities(temperature)]
        metrics = {k: v / self.acc["n_" + k] for k, v in self.acc.items() if not k.startswith("n_")}
        metrics["alpha_entropy"] = alpha_entropy(probs_t)
        if "alpha_grad_cost" in metrics:  # 1: alpha moves by the cost term alone, 0: by the task alone
            total = metrics["alpha_grad_cost"] + metrics["alpha_grad_task"]
            metrics["cost_grad_share"] = metrics["alpha_grad_cost"] / total if total > 0 else 0.0
        with torch.no_grad():
            metrics["expected_cost"] = float(self.cost.expected(self.alphas, temperature))
        if self.s.temperature_final is not None:
            metrics["temperature"] = temperature
        arch = self.supernet.derive()
        try:
            metrics["derived_cost"] = float(self.cost.of_arch(arch))
        except FnatuneError:
            pass  # a skip sorted into a position whose candidates lack it: no single cost to report
        probs = [p.tolist() for p in probs_t]
        self.history.append({"epoch": pr["epoch"], "metrics": metrics, "probabilities": probs,
                             "arch": arch.block_string()})
        if self.dp is None or self.dp.is_main:
            atomic_write_json(self.workdir / "alpha_history.json", self.history)
            arch.save(self.workdir / "arch.json")
        self.observer.on_epoch(pr["epoch"], metrics, probs, arch)
        pr["epoch"] += 1
        pr["w_in_epoch"] = 0
        pr["cycle_pos"] = 0
        self.acc = {}
        self.save_checkpoint()
