"""Peak memory (and time) of the super net's mixed arch step against a single-path weight step.

An arch step runs every candidate of every searchable layer at once (FNA_SPEC §5.2); kept for the backward
pass, their activations made FNA's authors drop to one image per GPU for RetinaNet's arch steps. With
``search.recompute_mixed`` (the default) each mixed layer keeps only its input, and its candidates are
recomputed in the backward pass, one layer at a time.

Peak memory of a step = the allocator's peak during two steps (after a warm-up one) minus what was allocated
before them: CUDA's allocator statistics on a GPU; on the CPU the process's peak resident set, each step
type in a fresh process with glibc's mmap threshold pinned low, so freed tensors leave the resident set
(resetting the peak through /proc/self/clear_refs). Times are medians of interleaved steps in one process.

    python benchmarks/search_memory.py [--space mbv2_seg] [--size 192x192] [--batch 2] [--device cpu] [--share 0.7]

Last line: ``peak memory mixed/single = R, time new/old = T`` (mixed = the arch step with ``--share``, the
default's, new/old = its time over the plain mixed step's; goals R <= 2, T <= 1.3).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _steps import Steps

KINDS = {"single": "single-path weight step", "mixed_plain": "mixed arch step, activations kept",
         "mixed_share": "mixed arch step, recompute_mixed SHARE", "mixed_all": "mixed arch step, all recomputed"}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _step(st: Steps, kind: str, share: float) -> None:
    if kind == "single":
        st.weight_step()
    else:
        st.arch_step(recompute={"mixed_plain": 0.0, "mixed_share": share, "mixed_all": 1.0}[kind])


def peak_bytes(a: argparse.Namespace, kind: str) -> int:
    """The peak of one step type, measured in this process (call it in a fresh one on the CPU)."""
    st = Steps(a.space, a.batch, a.hw, a.device)
    _step(st, kind, a.share)  # warm-up: optimiser state, the allocator's pools, lazy inits
    if st.dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            _step(st, kind, a.share)
        return torch.cuda.max_memory_allocated() - base
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the present resident set
    for _ in range(2):
        _step(st, kind, a.share)
    return (_rss_kib("VmHWM") - base) * 1024


def peak_in_fresh_process(a: argparse.Namespace, kind: str) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--space", a.space, "--size", a.size, "--batch", str(a.batch),
           "--device", a.device, "--threads", str(a.threads), "--share", str(a.share), "--peak-of", kind]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak"])


def times(a: argparse.Namespace) -> dict[str, float]:
    st = Steps(a.space, a.batch, a.hw, a.device)
    for kind in KINDS:
        _step(st, kind, a.share)
    runs: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(a.repeats):
        for kind in KINDS:
            t0 = time.perf_counter()
            _step(st, kind, a.share)
            runs[kind].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="mbv2_seg")
    ap.add_argument("--size", default="192x192")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--share", type=float, default=0.7, help="the recompute_mixed share under test (the default's)")
    ap.add_argument("--peak-of", choices=list(KINDS), help=argparse.SUPPRESS)  # the child process's job
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.hw = tuple(int(v) for v in a.size.split("x"))
    if a.peak_of:
        print(json.dumps({"peak": peak_bytes(a, a.peak_of)}))
        return
    on_cuda = torch.device(a.device).type == "cuda"
    peaks = {k: (peak_bytes(a, k) if on_cuda else peak_in_fresh_process(a, k)) for k in KINDS}
    t = times(a)
    print(f"space {a.space}, input {a.batch}x3x{a.size}, {a.device}, {a.threads} threads; "
          f"peak = {'CUDA allocator' if on_cuda else 'resident set, one process per step type'}; "
          f"time = median of {a.repeats} interleaved")
    for kind, label in KINDS.items():
        label = label.replace("SHARE", str(a.share))
        print(f"  {label:40s} peak {peaks[kind] / 2**20:8.1f} MiB   time {t[kind] * 1e3:8.1f} ms")
    print(f"  plain mixed / single: peak {peaks['mixed_plain'] / peaks['single']:.2f}x, "
          f"time {t['mixed_plain'] / t['single']:.2f}x")
    print(f"  all recomputed / single: peak {peaks['mixed_all'] / peaks['single']:.2f}x, "
          f"time {t['mixed_all'] / t['mixed_plain']:.2f}x the plain mixed step's")
    r = peaks["mixed_share"] / peaks["single"]
    tr = t["mixed_share"] / t["mixed_plain"]
    print(f"peak memory mixed/single = {r:.2f}, time new/old = {tr:.2f}")


if __name__ == "__main__":
    main()
