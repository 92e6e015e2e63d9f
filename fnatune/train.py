"""The plain training loop used by fine-tuning (parameter adaptation) and seed pretraining.

Iteration-based like the paper's recipes (100K iterations for Cityscapes). The settings are a
:class:`~fnatune.config.sections.TrainLoopCfg` (the pipeline's ``finetune`` section, or the one
:meth:`~fnatune.config.sections.PretrainCfg.loop` builds). ``loss_fn(batch)`` returns the scalar loss; the
loop owns the optimiser, the LR schedule (a pure function of the iteration), gradient clipping, optional
mixed precision on CUDA, BN recalibration before the first step (``bn_recalibration_iters``), periodic
evaluation, atomic checkpoints and an exact resume (model, optimiser,
iteration, RNG states and the stream's position; :mod:`fnatune.loop`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fnatune.bn import recalibrate_bn
from fnatune.config.sections import TrainLoopCfg
from fnatune.loop import (
    LoopCheckpoint,
    NonFiniteLossError,
    all_finite,
    build_optimizer,
    clip_gradients,
    rng_state,
    set_rng_state,
)
from fnatune.schedule import LRSchedule, set_lr


class TrainObserver:
    def on_step(self, info: dict[str, Any]) -> None: ...

    def on_log(self, it: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, path: Path, progress: dict[str, Any]) -> None: ...

    def on_recalibrated(self, info: dict[str, Any]) -> None: ...


class Trainer:
    """Runs (or resumes) ``settings.iters`` iterations of ``loss_fn`` over ``stream`` in ``workdir``."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any], Tensor], stream: Any, settings: TrainLoopCfg,
                 workdir: str | Path, observer: TrainObserver | None = None,
                 evaluate: Callable[[], dict[str, float]] | None = None, seed: int = 1, dp: Any = None) -> None:
        self.model, self.loss_fn, self.stream, self.s, self.seed = model, loss_fn, stream, settings, seed
        self.workdir = Path(workdir)
        self.dp = dp  # a fnatune.distributed.DataParallel: averaged gradients, rank 0's buffers and checkpoints
        main = dp is None or dp.is_main
        self.observer = (observer or TrainObserver()) if main else TrainObserver()
        self.evaluate = evaluate if main else None
        self.ckpt = LoopCheckpoint(self.workdir, "fnatune-train", dp)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = build_optimizer(params, settings.optim)
        self.schedule = LRSchedule(base_lr=settings.optim.lr, total_iters=settings.iters, policy=settings.policy,
                                   warmup_iters=settings.warmup_iters, warmup_ratio=settings.warmup_ratio,
                                   milestones=settings.milestones, gamma=settings.gamma, power=settings.power)
        self.it = 0
        self.acc: dict[str, float] = {"loss": 0.0, "n": 0.0}
        self.log: list[dict[str, Any]] = []
        self.gen = torch.Generator()
        self.scaler = torch.amp.GradScaler("cuda") if settings.amp == "fp16" else None

    @property
    def checkpoint_path(self) -> Path:
        return self.ckpt.path

    def save_checkpoint(self) -> Path:
        path = self.ckpt.save(
            full=lambda: {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "it": self.it,
                          "acc": dict(self.acc), "log": self.log, "rng": rng_state(self.gen),
                          "stream": self.stream.state_dict()},
            own=lambda: {"rng": rng_state(self.gen), "stream": self.stream.state_dict()})
        self.observer.on_checkpoint(path, {"it": self.it, "iters": self.s.iters})
        return path

    def load_checkpoint(self) -> bool:
        loaded = self.ckpt.load()
        if loaded is None:
            return False
        state, own = loaded
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.it, self.acc, self.log = int(state["it"]), dict(state["acc"]), list(state["log"])
        mine = own or state
        self.stream.load_state_dict(mine["stream"])
        set_rng_state(mine["rng"], self.gen)
        return True

    def _autocast(self) -> Any:
        dev = next(self.model.parameters()).device
        if self.s.amp == "none" or dev.type != "cuda":
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.s.amp == "bf16" else torch.float16)

    def step(self) -> float:
        lr = self.schedule.lr_at(self.it)
        set_lr(self.opt, lr)
        if self.dp is not None:
            self.dp.broadcast_buffers(self.model)
        with self._autocast():
            loss = self.loss_fn(self.stream.next())
        if not all_finite(loss, self.dp):
            raise NonFiniteLossError(f"non-finite loss ({float(loss.detach())}) at iteration {self.it}; "
                                     f"training stopped; last good checkpoint: {self.ckpt.describe()}")
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        params = [p for g in self.opt.param_groups for p in g["params"]]
        if self.dp is not None:
            self.dp.average_grads(params)
        clip_gradients(params, self.s.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.it += 1
        return float(loss.detach())

    def _recalibrate(self) -> None:
        """BN statistics recomputed before the first step (FNA_SPEC §13.2), then a checkpoint, so a resumed
        run never recalibrates twice."""
        n = self.s.bn_recalibration_iters

        def forward() -> None:
            with self._autocast():
                self.loss_fn(self.stream.next())

        t0 = time.perf_counter()
        layers = recalibrate_bn(self.model, forward, n)
        self.observer.on_recalibrated({"iters": n, "bn_layers": layers, "seconds": time.perf_counter() - t0})
        self.save_checkpoint()

    def run(self, max_steps: int | None = None) -> list[dict[str, Any]]:
        """Train to ``settings.iters`` (resuming first). Returns the log (one entry per ``log_every``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.load_checkpoint():
            torch.manual_seed(self.seed)
            self.gen.manual_seed(self.seed)
            if self.s.bn_recalibration_iters:
                self._recalibrate()
        self.model.train()
        t0, taken = time.perf_counter(), 0
        while self.it < self.s.iters:
            if max_steps is not None and taken >= max_steps:
                self.save_checkpoint()
                return self.log
            loss = self.step()
            taken += 1
            self.acc["loss"] += loss
            self.acc["n"] += 1
            self.observer.on_step({"it": self.it, "iters": self.s.iters, "loss": loss,
                                   "lr": self.opt.param_groups[0]["lr"], "elapsed": time.perf_counter() - t0})
            last = self.it == self.s.iters
            if self.s.log_every and (self.it % self.s.log_every == 0 or last) and self.acc["n"]:
                metrics = {"loss": self.acc["loss"] / self.acc["n"], "lr": self.opt.param_groups[0]["lr"]}
                if self.evaluate is not None and self.s.eval_every and self.it % self.s.eval_every == 0:
                    metrics.update(self.evaluate())
                    self.model.train()
                self.log.append({"it": self.it, **metrics})
                self.observer.on_log(self.it, metrics)
                self.acc = {"loss": 0.0, "n": 0.0}
            if (self.s.checkpoint_every and self.it % self.s.checkpoint_every == 0) or last:
                self.save_checkpoint()
        return self.log
