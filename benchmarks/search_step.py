"""Overhead of the super net's two step types against the plain networks they stand for.

P1 = single-path **weight step** of the super net (path mode, alpha frozen)
     / train step of the equivalent ChildNet (same arch, same candidate BN, same weights).
     Goal <= 1.10: running one path of a super net should cost what the path alone costs.
P2 = softmax-mixed **arch step** (every candidate, weights frozen, gradient to alpha, + E[cost] term)
     / sum over candidate slots k of a single-path weight step on path k
     (path k takes candidate min(k, n-1) in every searchable layer, so every candidate runs once).
     Goal <= 1.10: mixing must not cost more than running every candidate separately.

A "step" is forward + backward + optimiser step on a batch, loss = mean of the last tap (the head is
not the subject here). All timings are interleaved in one run and reported as medians, and the
ratios are the figures to quote (this machine is noisy).

    python benchmarks/search_step.py [--space mbv2_seg] [--size 192x192] [--batch 2] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fnatune.cost import madds_table
from fnatune.nets import SuperNet
from fnatune.space import get_space


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="mbv2_seg")
    ap.add_argument("--size", default="192x192")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.size.split("x"))
    dev = torch.device(a.device)
    torch.manual_seed(0)
    space = get_space(a.space)
    sup = SuperNet(space).to(dev).train()
    table = madds_table(sup)
    alphas = sup.arch_parameters()
    weights = sup.weight_parameters()
    x = torch.randn(a.batch, 3, h, w, device=dev)
    arch = space.sample(1)
    idx = space.indices_of(arch)
    child = sup.extract_child(arch).to(dev).train()
    w_opt = torch.optim.SGD(weights, lr=1e-6, momentum=0.9)
    c_opt = torch.optim.SGD(child.parameters(), lr=1e-6, momentum=0.9)
    a_opt = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n_slots = max(len(c) for c in table.candidates)
    slot_paths = [[min(k, len(c) - 1) for c in table.candidates] for k in range(n_slots)]

    side = {"w": None}

    def set_grad(w_on: bool) -> None:  # as the Searcher does: flags change only on a switch
        if side["w"] == w_on:
            return
        side["w"] = w_on
        for p in weights:
            p.requires_grad_(w_on)
        for p in alphas:
            p.requires_grad_(not w_on)

    def weight_step(path: list[int]) -> None:
        set_grad(True)
        loss = sup(x, indices=path)[-1].mean()
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()
        sync()

    def child_step() -> None:
        loss = child(x)[-1].mean()
        c_opt.zero_grad(set_to_none=True)
        loss.backward()
        c_opt.step()
        sync()

    def arch_step() -> None:
        set_grad(False)
        loss = sup(x, temperature=1.0)[-1].mean() + 0.02 * torch.log10(table.expected(alphas))
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        a_opt.step()
        sync()

    for _ in range(2):  # warm-up
        weight_step(idx), child_step(), arch_step()
    t_path, t_child, t_mixed, t_slots = [], [], [], []
    for _ in range(a.repeats):
        t_path.append(timed(lambda: weight_step(idx)))
        t_child.append(timed(child_step))
        t_mixed.append(timed(arch_step))
        t_slots.append(sum(timed(lambda p=p: weight_step(p)) for p in slot_paths))
    med = statistics.median
    p1 = med(t_path) / med(t_child)
    p2 = med(t_mixed) / med(t_slots)
    print(f"space {a.space}, input {a.batch}x3x{h}x{w}, {a.device}, {a.threads} threads, median of {a.repeats}")
    print(f"  single-path weight step   {med(t_path) * 1e3:8.1f} ms")
    print(f"  ChildNet train step       {med(t_child) * 1e3:8.1f} ms")
    print(f"  mixed arch step           {med(t_mixed) * 1e3:8.1f} ms")
    print(f"  sum of {n_slots} slot paths       {med(t_slots) * 1e3:8.1f} ms")
    print(f"P1 = single-path / child = {p1:.3f}   (goal <= 1.10)")
    print(f"P2 = mixed / sum of paths = {p2:.3f}   (goal <= 1.10)")


if __name__ == "__main__":
    main()
