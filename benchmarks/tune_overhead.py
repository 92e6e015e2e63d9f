"""What running a pipeline as a Ray Tune trial costs, against the same stages called directly.

    T = wall time of `fnatune run PIPELINE` (a local Ray started on 127.0.0.1, one Tune trial, per-epoch
        reports and a Tune checkpoint at every stage checkpoint, Ray stopped at the end)
    D = wall time of `fnatune.pipeline.execute(...)` in a fresh Python process (no Ray at all)
    W = (with --warm-ray) `fnatune run PIPELINE --address 127.0.0.1:PORT` on a Ray that was started once
        before the rounds (`ray start --head`, 127.0.0.1 only), as on a cluster or a workstation that
        keeps one running: no Ray start or stop in the run
    ratio = median(T) / median(D); goal <= 1.10.

Each side's time is also split into the time spent inside the pipeline's stages (the sum of their
"done in" lines) and the rest (imports, and for T: starting Ray, starting the trial, stopping Ray), so the
fixed cost of Tune and what it adds inside the stages (reports, checkpoint copies) are seen apart.

Both sides run as fresh processes (imports included) with tracking off, on the same config, with the
same data and the same cached pretrained seed (a warm-up run fills both first). Runs alternate D, T, D, T
so that drift of this noisy machine hits both sides alike.

    python benchmarks/tune_overhead.py [--pipeline pipelines/tiny/seg.yaml] [--repeats 2] [--warm-ray]
                                       [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIRECT = """
import sys
from pathlib import Path
from fnatune.config import load_config
from fnatune.framework import Progress
from fnatune.pipeline import execute
cfg = load_config(sys.argv[1], sys.argv[3:])
execute(cfg, Path(sys.argv[2]), progress=Progress(print))
"""


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall time, time inside the stages) of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, sum(float(x) for x in re.findall(r"\] \w+: done in ([0-9.]+) s", proc.stdout))


def _start_ray(work: Path, env: dict[str, str]) -> str:
    """A Ray head on 127.0.0.1 that outlives the runs (what `fnatune run --address` joins)."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={port}", "--include-dashboard=false", f"--num-cpus={os.cpu_count()}"],
                   env=env, check=True, capture_output=True, cwd=work)
    time.sleep(5.0)  # its daemons finish starting before the timed run
    return f"127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="pipelines/tiny/seg.yaml")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warm-ray", action="store_true", help="also time runs joining an already running Ray")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    pipeline = Path(args.pipeline).resolve()
    overrides = ["tracking.enabled=false", *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="fnatune-bench-"))
    env = {**os.environ, "FNATUNE_CACHE": os.environ.get("FNATUNE_CACHE", str(work / "cache"))}
    direct = [sys.executable, "-c", DIRECT, str(pipeline)]
    tune = [sys.executable, "-m", "fnatune.cli", "run", str(pipeline)]
    sets = [a for o in overrides for a in ("--set", o)]

    print(f"pipeline {args.pipeline} {' '.join(args.overrides)}; {os.cpu_count()} CPUs; work dir {work}")
    warm, _ = _timed([*direct, str(work / "warmup"), *overrides], work, env)  # data + seed cache for both sides
    print(f"warm-up (generates data, pretrains or reads the seed): {warm:.1f} s")
    runs: dict[str, list[tuple[float, float]]] = {"direct (no Ray)": [], "under Ray Tune": []}
    if args.warm_ray:
        runs["warm Ray (--address)"] = []
    for i in range(args.repeats):
        runs["direct (no Ray)"].append(_timed([*direct, str(work / f"direct{i}"), *overrides], work, env))
        runs["under Ray Tune"].append(_timed([*tune, "--run-dir", str(work / f"tune{i}"), *sets], work, env))
        if args.warm_ray:  # a Ray started (and settled) before the timed run, stopped after it: no Ray in D, T
            address = _start_ray(work, env)
            try:
                runs["warm Ray (--address)"].append(
                    _timed([*tune, "--run-dir", str(work / f"warm{i}"), *sets, "--address", address], work, env))
            finally:
                subprocess.run([str(Path(sys.executable).with_name("ray")), "stop"], env=env, capture_output=True)
        print(f"  round {i + 1}: " + ", ".join(f"{name.split(' ')[0]} {rs[-1][0]:.1f} s (stages {rs[-1][1]:.1f})"
                                               for name, rs in runs.items()))
    med = statistics.median
    d = med(r[0] for r in runs["direct (no Ray)"])
    ds = med(r[1] for r in runs["direct (no Ray)"])
    for name, rs in runs.items():
        wall, stages = med(r[0] for r in rs), med(r[1] for r in rs)
        print(f"{name:<21} median {wall:.1f} s: stages {stages:.1f} s, outside them {med(r[0] - r[1] for r in rs):.1f} s"
              + ("" if rs is runs["direct (no Ray)"] else f"; ratio {wall / d:.3f}, inside the stages {stages / ds:.3f}"))
    t = med(r[0] for r in runs["under Ray Tune"])
    print(f"ratio tune/direct {t / d:.3f}  (goal <= 1.10)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
