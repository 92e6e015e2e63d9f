"""The super net's step types, shared by the step-time and step-memory benchmarks.

A "step" is forward + backward + optimiser step on one batch, loss = mean of the last tap (the head is not
the subject here), with the flags flipped as the Searcher flips them (only on a switch of side).
"""
from __future__ import annotations

import torch

from fnatune.cost import madds_table
from fnatune.nets import SuperNet
from fnatune.space import get_space


class Steps:
    """A super net, the ChildNet of one sampled path, their optimisers and one batch of noise."""

    def __init__(self, space: str, batch: int, size: tuple[int, int], device: str = "cpu", seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.dev = torch.device(device)
        self.space = get_space(space)
        self.sup = SuperNet(self.space).to(self.dev).train()
        self.table = madds_table(self.sup)
        self.alphas = self.sup.arch_parameters()
        self.weights = self.sup.weight_parameters()
        self.x = torch.randn(batch, 3, *size, device=self.dev)
        arch = self.space.sample(1)
        self.path = self.space.indices_of(arch)
        self.child = self.sup.extract_child(arch).to(self.dev).train()
        self.w_opt = torch.optim.SGD(self.weights, lr=1e-6, momentum=0.9)
        self.c_opt = torch.optim.SGD(self.child.parameters(), lr=1e-6, momentum=0.9)
        self.a_opt = torch.optim.Adam(self.alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        self.n_slots = max(len(c) for c in self.table.candidates)
        self.slot_paths = [[min(k, len(c) - 1) for c in self.table.candidates] for k in range(self.n_slots)]
        self._side: bool | None = None

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def _set_grad(self, weights_on: bool) -> None:
        if self._side == weights_on:
            return
        self._side = weights_on
        for p in self.weights:
            p.requires_grad_(weights_on)
        for p in self.alphas:
            p.requires_grad_(not weights_on)

    def weight_step(self, path: list[int] | None = None) -> None:
        """A single-path weight step (alpha frozen) on ``path`` (default: the sampled one)."""
        self._set_grad(True)
        loss = self.sup(self.x, indices=self.path if path is None else path)[-1].mean()
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.w_opt.step()
        self.w_opt.zero_grad(set_to_none=True)
        self.sync()

    def child_step(self) -> None:
        """A train step of the ChildNet the sampled path stands for."""
        loss = self.child(self.x)[-1].mean()
        self.c_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.c_opt.step()
        self.c_opt.zero_grad(set_to_none=True)
        self.sync()

    def arch_step(self, recompute: float) -> None:
        """A softmax-mixed arch step (weights frozen, gradient to alpha, + the E[cost] term), recomputing
        the candidates of the mixed layers that hold this share of the activations."""
        self._set_grad(False)
        self.sup.recompute_mixed = recompute
        loss = self.sup(self.x, temperature=1.0)[-1].mean() + 0.02 * torch.log10(self.table.expected(self.alphas))
        self.a_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.a_opt.step()
        self.a_opt.zero_grad(set_to_none=True)
        self.sync()
