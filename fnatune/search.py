"""The FNA++ architecture search (FNA_SPEC §5): alternating weight and arch steps, resumable exactly.

Call order::

    searcher = Searcher(model, supernet, loss_fn, arch_stream, weight_stream, cost_table, settings, workdir)
    result = searcher.run()          # resumes from workdir/checkpoint.pt when it exists

* A **weight step** samples one candidate per searchable layer (uniformly during the warm-up epochs,
  then from softmax(alpha / sample_temperature)), runs that single path, and updates the weights only;
  alpha is frozen. Loss = task loss.
* An **arch step** runs every candidate, mixed by softmax(alpha / temperature), first order, with the
  weights frozen, and updates alpha only. Loss = task + lambda * log_tau(E[cost]).
* One epoch = ``steps_per_epoch`` weight steps (FNA: the number of batches of the arch split). After
  the warm-up each cycle is ``arch_steps`` arch steps followed by ``weight_steps`` weight steps.

``model`` is whatever computes the task loss (an mmseg segmentor, a plain torch net); it must contain
``supernet``, whose mode the searcher switches with ``use_path``/``use_mixed``. ``loss_fn(batch)`` runs
``model`` on one batch and returns the scalar task loss.

The checkpoint holds the model (weights and alpha), both optimisers, the step counters, every RNG
state (torch, CUDA, NumPy, Python and the path sampler) and the two streams' positions, so a run
killed at any step and resumed from its last checkpoint ends with bit-identical alpha on the CPU.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.errors import FnatuneError
from fnatune.io import atomic_torch_save, atomic_write_json
from fnatune.nets import SuperNet
from fnatune.schedule import LRSchedule, set_lr

CHECKPOINT = "checkpoint.pt"


class NonFiniteLossError(FnatuneError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class OptimSpec:
    """An optimiser recipe. ``grad_clip`` is the max L2 norm (None: no clipping)."""

    name: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None


def build_optimizer(params: Sequence[nn.Parameter], spec: OptimSpec) -> torch.optim.Optimizer:
    name = spec.name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                                   eps=spec.eps)
    if name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay,
                                eps=spec.eps)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay,
                                 eps=spec.eps)
    raise FnatuneError(f"unknown optimizer '{spec.name}'; expected sgd, rmsprop, adam or adamw")


@dataclass
class LRSpec:
    """Weight-LR schedule of the search; milestones are in epochs (converted to weight iterations)."""

    policy: str = "step"
    milestones: list[int] = field(default_factory=lambda: [8, 11])
    gamma: float = 0.1
    power: float = 0.9
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0


@dataclass
class SearchSettings:
    """Hyper-parameters of one search; defaults are FNA's RetinaNet search (FNA_SPEC §5.6)."""

    epochs: int = 14
    warmup_epochs: int = 8
    steps_per_epoch: int | None = None  # None: the number of batches of the arch split (FNA)
    arch_steps: int = 1
    weight_steps: int = 1
    temperature: float = 1.0          # mixing softmax(alpha/T) in arch steps and in E[cost]
    sample_temperature: float = 1.0   # path sampling softmax(alpha/T) in weight steps
    cost_lambda: float = 0.02
    log_base: float = 10.0
    cost_target: float | None = None  # not FNA: lambda * |log_tau(C / target)| instead of lambda * log_tau(C)
    weight_optim: OptimSpec = field(default_factory=lambda: OptimSpec("sgd", 0.02, 0.9, 1e-4, grad_clip=35.0))
    arch_optim: OptimSpec = field(default_factory=lambda: OptimSpec(
        "adam", 3e-4, weight_decay=1e-3, betas=(0.5, 0.999), grad_clip=35.0))
    weight_lr: LRSpec = field(default_factory=LRSpec)
    checkpoint_every: int = 100
    seed: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise FnatuneError(f"need epochs >= 1 and 0 <= warmup_epochs <= epochs, got {self.epochs}/{self.warmup_epochs}")
        if self.arch_steps < 1 or self.weight_steps < 1:
            raise FnatuneError("arch_steps and weight_steps must be >= 1")
        if self.log_base <= 1.0:
            raise FnatuneError(f"log_base must be > 1, got {self.log_base}")


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


def alpha_entropy(probabilities: Sequence[Tensor]) -> float:
    """Mean entropy (nats) of the per-layer op distributions: log(n) when uniform, 0 when decided."""
    ents = [float(-(p * p.clamp_min(1e-12).log()).sum()) for p in probabilities]
    return sum(ents) / max(len(ents), 1)


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": random.getstate(),
        "path": gen.get_state(),
    }


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    gen.set_state(state["path"])


class Searcher:
    """Runs (or resumes) one FNA++ search in ``workdir``; see the module docstring."""

    def __init__(self, model: nn.Module, supernet: SuperNet, loss_fn: Callable[[Any], Tensor],
                 arch_stream: Any, weight_stream: Any, cost_table: Any, settings: SearchSettings,
                 workdir: str | Path, observer: SearchObserver | None = None,
                 path_hook: Callable[[list[int]], list[int]] | None = None, dp: Any = None) -> None:
        if not any(m is supernet for m in model.modules()):
            raise FnatuneError("the search model must contain the SuperNet it searches")
        self.model, self.supernet, self.loss_fn = model, supernet, loss_fn
        self.arch_stream, self.weight_stream = arch_stream, weight_stream
        self.cost, self.s = cost_table, settings
        self.workdir = Path(workdir)
        self.observer = observer or SearchObserver()
        self.dp = dp  # a fnatune.distributed.DataParallel: one path for all, averaged gradients
        self.path_hook = path_hook or (dp.broadcast_path if dp is not None else None)
        if dp is not None and not dp.is_main:
            self.observer = SearchObserver()  # progress, tracking and Tune reports come from rank 0
        self.alphas = supernet.arch_parameters()
        arch_ids = {id(a) for a in self.alphas}
        self.weights = [p for p in model.parameters() if id(p) not in arch_ids]
        self.weight_opt = build_optimizer(self.weights, settings.weight_optim)
        self.arch_opt = build_optimizer(self.alphas, settings.arch_optim)
        self.steps_per_epoch = settings.steps_per_epoch or len(arch_stream)
        lr = settings.weight_lr
        self.schedule = LRSchedule(
            settings.weight_optim.lr, settings.epochs * self.steps_per_epoch, lr.policy, lr.warmup_iters,
            lr.warmup_ratio, [m * self.steps_per_epoch for m in lr.milestones], lr.gamma, lr.power)
        self.gen = torch.Generator()
        self.progress: dict[str, Any] = {"epoch": 0, "w_in_epoch": 0, "cycle_pos": 0, "step": 0,
                                         "weight_iter": 0, "arch_iter": 0, "done": False}
        self.acc: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / CHECKPOINT

    def save_checkpoint(self) -> Path:
        if self.dp is not None and not self.dp.is_main:
            return self._save_rank_state()
        state = {
            "format": "fnatune-search", "version": 1,
            "model": self.model.state_dict(),
            "weight_opt": self.weight_opt.state_dict(), "arch_opt": self.arch_opt.state_dict(),
            "progress": dict(self.progress), "acc": dict(self.acc), "history": self.history,
            "rng": _rng_state(self.gen),
            "streams": {"arch": self.arch_stream.state_dict(), "weight": self.weight_stream.state_dict()},
            "settings": _plain(asdict(self.s)),
        }
        path = atomic_torch_save(state, self.checkpoint_path)
        if self.dp is not None:
            self.dp.barrier()  # every rank's state of this step is on disk before anyone moves on
        self.observer.on_checkpoint(path, dict(self.progress))
        return path

    def _save_rank_state(self) -> Path:
        """A worker other than rank 0 keeps only what differs from rank 0: its RNGs and its data shard's position."""
        from fnatune.distributed import rank_file

        path = atomic_torch_save({"rng": _rng_state(self.gen), "streams": {
            "arch": self.arch_stream.state_dict(), "weight": self.weight_stream.state_dict()}},
            rank_file(self.checkpoint_path, self.dp.rank))
        self.dp.barrier()
        return path

    def load_checkpoint(self) -> bool:
        """Restore from ``workdir/checkpoint.pt`` if present; returns whether it did."""
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if state.get("format") != "fnatune-search":
            raise FnatuneError(f"{self.checkpoint_path} is not a fnatune search checkpoint")
        self.model.load_state_dict(state["model"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.progress, self.acc, self.history = dict(state["progress"]), dict(state["acc"]), list(state["history"])
        self.arch_stream.load_state_dict(state["streams"]["arch"])
        self.weight_stream.load_state_dict(state["streams"]["weight"])
        _set_rng_state(state["rng"], self.gen)
        if self.dp is not None and not self.dp.is_main:
            from fnatune.distributed import rank_file

            own = torch.load(rank_file(self.checkpoint_path, self.dp.rank), map_location="cpu", weights_only=True)
            self.arch_stream.load_state_dict(own["streams"]["arch"])
            self.weight_stream.load_state_dict(own["streams"]["weight"])
            _set_rng_state(own["rng"], self.gen)
        return True

    # ------------------------------------------------------------------------------ steps
    def _require(self, weights: bool) -> None:
        """Freeze one side. Only on a switch: toggling ~10^3 flags every step is measurable on small inputs."""
        if getattr(self, "_grad_side", None) == weights:
            return
        self._grad_side = weights
        for p in self.weights:
            p.requires_grad_(weights)
        for a in self.alphas:
            a.requires_grad_(not weights)

    def _check(self, loss: Tensor, kind: str) -> None:
        ok = bool(torch.isfinite(loss.detach()).all())
        if self.dp is not None:
            ok = self.dp.all_ok(ok)  # all ranks stop together
        if not ok:
            last = self.checkpoint_path if self.checkpoint_path.exists() else "none yet"
            raise NonFiniteLossError(
                f"non-finite {kind} loss ({float(loss.detach())}) at step {self.progress['step']} "
                f"(epoch {self.progress['epoch']}); the search stopped; last good checkpoint: {last}")

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
        if self.s.weight_optim.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.weights if p.grad is not None], self.s.weight_optim.grad_clip)
        self.weight_opt.step()
        self.weight_opt.zero_grad(set_to_none=True)
        self.progress["weight_iter"] += 1
        return {"weight_loss": float(loss.detach()), "lr": lr}

    def arch_step(self) -> dict[str, float]:
        self._require(weights=False)
        self.supernet.use_mixed(self.s.temperature)
        if self.dp is not None:
            self.dp.broadcast_buffers(self.model)
        task = self.loss_fn(self.arch_stream.next())
        cost = self.cost.expected(self.alphas, self.s.temperature)
        loss = task + self.s.cost_lambda * self.cost_term(cost)
        self._check(loss, "arch")
        self.arch_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.dp is not None:
            self.dp.average_grads(self.alphas)
        if self.s.arch_optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.alphas, self.s.arch_optim.grad_clip)
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
        self.progress["arch_iter"] += 1
        return {"arch_loss": float(loss.detach()), "arch_task_loss": float(task.detach()),
                "expected_cost": float(cost.detach())}

    def cost_term(self, cost: Tensor) -> Tensor:
        """log_tau(C) (FNA_SPEC §5.3), or |log_tau(C / target)| when a target cost is set."""
        if self.s.cost_target is None:
            return torch.log(cost) / math.log(self.s.log_base)
        return (torch.log(cost / self.s.cost_target) / math.log(self.s.log_base)).abs()

    # ------------------------------------------------------------------------------ loop
    def run(self, max_steps: int | None = None) -> SearchResult | None:
        """Run to the end (resuming first if a checkpoint exists). With ``max_steps``, stop after that many
        steps of this call, checkpoint and return None (used by step-wise drivers)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.load_checkpoint():
            torch.manual_seed(self.s.seed)
            self.gen.manual_seed(self.s.seed)
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
        probs = [p.tolist() for p in self.supernet.probabilities(self.s.temperature)]
        return SearchResult(self.supernet.derive(), probs, self.history, path)

    def _end_epoch(self) -> None:
        pr = self.progress
        probs_t = [p.detach().cpu() for p in self.supernet.probabilities(self.s.temperature)]
        metrics = {k: v / self.acc["n_" + k] for k, v in self.acc.items() if not k.startswith("n_")}
        metrics["alpha_entropy"] = alpha_entropy(probs_t)
        with torch.no_grad():
            metrics["expected_cost"] = float(self.cost.expected(self.alphas, self.s.temperature))
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


def _plain(obj: Any) -> Any:
    """Settings as plain lists/dicts (tuples become lists) so ``weights_only`` loading accepts them."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
