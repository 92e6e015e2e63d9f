"""What running a pipeline as a Ray Tune trial costs, against the same stages called directly.

    T = wall time of `fnatune run PIPELINE` (a local Ray started on 127.0.0.1, one Tune trial, per-epoch
        reports and a Tune checkpoint at every stage checkpoint, Ray stopped at the end)
    D = wall time of `fnatune.pipeline.execute(...)` in a fresh Python process (no Ray at all)
    ratio = median(T) / median(D); goal <= 1.10.

Both sides run as fresh processes (imports included) with tracking off, on the same config, with the
same data and the same cached pretrained seed (a warm-up run fills both first). Runs alternate D, T, D, T
so that drift of this noisy machine hits both sides alike.

    python benchmarks/tune_overhead.py [--pipeline pipelines/tiny/seg.yaml] [--repeats 2] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import os
import shutil
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
from fnatune.pipeline import Progress, execute
cfg = load_config(sys.argv[1], sys.argv[3:])
execute(cfg, Path(sys.argv[2]), progress=Progress(lambda _: None))
"""


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="pipelines/tiny/seg.yaml")
    ap.add_argument("--repeats", type=int, default=2)
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
    warm = _timed([*direct, str(work / "warmup"), *overrides], work, env)  # data + seed cache for both sides
    print(f"warm-up (generates data, pretrains or reads the seed): {warm:.1f} s")
    d_times, t_times = [], []
    for i in range(args.repeats):
        d_times.append(_timed([*direct, str(work / f"direct{i}"), *overrides], work, env))
        t_times.append(_timed([*tune, "--run-dir", str(work / f"tune{i}"), *sets], work, env))
        print(f"  round {i + 1}: direct {d_times[-1]:.1f} s, tune {t_times[-1]:.1f} s")
    d, t = statistics.median(d_times), statistics.median(t_times)
    print(f"direct (no Ray)   median {d:.1f} s")
    print(f"under Ray Tune    median {t:.1f} s")
    print(f"ratio tune/direct {t / d:.3f}  (goal <= 1.10)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
