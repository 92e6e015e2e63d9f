"""Overhead of the super net's two step types against the plain networks they stand for.

P1 = single-path **weight step** of the super net (path mode, alpha frozen)
     / train step of the equivalent ChildNet (same arch, same candidate BN, same weights).
     Goal <= 1.10: running one path of a super net should cost what the path alone costs.
P2 = softmax-mixed **arch step** (every candidate, weights frozen, gradient to alpha, + E[cost] term)
     / sum over candidate slots k of a single-path weight step on path k
     (path k takes candidate min(k, n-1) in every searchable layer, so every candidate runs once).
     Goal <= 1.10: mixing must not cost more than running every candidate separately.

A "step" is forward + backward + optimiser step on a batch, loss = mean of the last tap (the head is
not the subject here). The two steps of each ratio alternate in one run and are reported as medians,
and the ratios are the figures to quote (this machine is noisy). An earlier version timed the path step
right after an arch step and the child step after the path step: that charged the super net with the
after-an-arch-step slowdown both nets show (printed separately now).

    python benchmarks/search_step.py [--space mbv2_seg] [--sizes 96x96,192x192] [--batch 2] [--repeats 7]
        [--threads 2] [--device cpu] [--recompute 0.7]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _steps import Steps


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(a: argparse.Namespace, size: tuple[int, int]) -> tuple[float, float]:
    """P1 and P2 at one input size. P1's two steps alternate, so each runs after the other (same allocator
    and cache state); P2's two alternate likewise. Then, for the record, each net's step right after a
    mixed arch step (the search's order after warm-up: the flags flip back and the arch step's memory has
    just been freed)."""
    st = Steps(a.space, a.batch, size, a.device)
    for _ in range(2):  # warm-up
        st.weight_step(), st.child_step(), st.arch_step(a.recompute)
    t_path, t_child, t_mixed, t_slots, t_path_am, t_child_am = [], [], [], [], [], []
    for _ in range(a.repeats):
        t_path.append(timed(st.weight_step))
        t_child.append(timed(st.child_step))
    for _ in range(a.repeats):
        t_mixed.append(timed(lambda: st.arch_step(a.recompute)))
        t_slots.append(sum(timed(lambda p=p: st.weight_step(p)) for p in st.slot_paths))
    for _ in range(a.repeats):
        st.arch_step(a.recompute)
        t_path_am.append(timed(st.weight_step))
        st.arch_step(a.recompute)
        t_child_am.append(timed(st.child_step))
    med = statistics.median
    p1, p2 = med(t_path) / med(t_child), med(t_mixed) / med(t_slots)
    h, w = size
    print(f"space {a.space}, input {a.batch}x3x{h}x{w}, {a.device}, {a.threads} threads, median of {a.repeats}"
          f", arch steps recompute_mixed {a.recompute}")
    print(f"  single-path weight step   {med(t_path) * 1e3:8.1f} ms")
    print(f"  ChildNet train step       {med(t_child) * 1e3:8.1f} ms")
    print(f"  mixed arch step           {med(t_mixed) * 1e3:8.1f} ms")
    print(f"  sum of {st.n_slots} slot paths       {med(t_slots) * 1e3:8.1f} ms")
    print(f"  after an arch step: single-path {med(t_path_am) * 1e3:.1f} ms, ChildNet {med(t_child_am) * 1e3:.1f} ms "
          f"(ratio {med(t_path_am) / med(t_child_am):.3f})")
    print(f"  P1 = single-path / child = {p1:.3f}   (goal <= 1.10)")
    print(f"  P2 = mixed / sum of paths = {p2:.3f}   (goal <= 1.10)")
    return p1, p2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="mbv2_seg")
    ap.add_argument("--sizes", default="96x96,192x192", help="comma-separated HxW input sizes")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recompute", type=float, default=0.7, help="search.recompute_mixed of the arch steps")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    figures = [(f"{h}x{w}", *measure(a, (h, w))) for h, w in sizes]
    print("P1 " + ", ".join(f"{name} {p1:.3f}" for name, p1, _ in figures) + "   (goal <= 1.10 at each)")


if __name__ == "__main__":
    main()
