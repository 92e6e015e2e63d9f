"""Time to remap a seed into a super net: MobileNetV2 into FNA's detection space (goal: < 0.5 s on one core), or
``--seed resnet50 --space resnet50_det`` (the ResNet-50 super net, 292M parameters; goal: < 1 s on one core).

Prints the median of several runs for: building the super net, remapping into it, and, side by side in
the same run, remapping into the seed's own layout (a plain ChildNet) as a reference, so the figures
can be compared as ratios on a noisy machine.

    python benchmarks/remap_speed.py [--repeats 7] [--threads 1] [--space mbv2_det] [--seed mobilenet_v2]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fnatune import get_space, load_seed
from fnatune.nets import ChildNet, SuperNet
from fnatune.remap import remap_into


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--space", default="mbv2_det")
    ap.add_argument("--seed", default="mobilenet_v2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seed = load_seed(args.seed)
    space = get_space(args.space)
    supernet = SuperNet(space)
    child = ChildNet(space.project(seed.arch))
    remap_into(seed, supernet)  # warm-up

    build = median_time(lambda: SuperNet(space), args.repeats)
    into_super = median_time(lambda: remap_into(seed, supernet), args.repeats)
    into_child = median_time(lambda: remap_into(seed, child), args.repeats)
    n_super = sum(1 for _ in supernet.state_dict())
    goal = 1000 if args.space.startswith("resnet") else 500
    print(f"threads={args.threads} seed={args.seed} space={args.space} repeats={args.repeats} (median)")
    print(f"build SuperNet            : {build * 1e3:8.1f} ms")
    print(f"remap seed -> SuperNet    : {into_super * 1e3:8.1f} ms  ({n_super} tensors)  goal < {goal} ms")
    print(f"remap seed -> ChildNet    : {into_child * 1e3:8.1f} ms")
    print(f"ratio super/child remap   : {into_super / into_child:8.2f}x")
    print(f"ratio remap/build         : {into_super / build:8.2f}x")


if __name__ == "__main__":
    main()
