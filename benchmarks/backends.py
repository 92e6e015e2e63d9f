"""The torchvision backend beside the OpenMMLab one, in one run: the tiny seg and det pipelines on both backends at
the same budget (same config, same seeds; metric and wall time per stage), then the data throughput of one worker
for both backends' training pipelines at the paper's input sizes (Cityscapes 1024x2048 crops 769, COCO images
resized to 800x1333 for RetinaNet, SSDLite's 320 pipeline).

Each pipeline runs ``--seeds`` times per backend (``seed`` = 1, 2, ...), so the table shows run-to-run spread
beside the difference between backends. The toy seed is pretrained once (cached under $FNATUNE_CACHE). Needs the
mm extra (it is the comparison).

    python benchmarks/backends.py [--seeds 2] [--tasks seg det] [--skip-pipelines] [--batches 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fnatune.config import load_config
from fnatune.framework import Progress
from fnatune.pipeline import execute
from fnatune.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("torchvision", "mm")
TINY = {"seg": ("pipelines/tiny/seg.yaml", "mIoU"), "det": ("pipelines/tiny/det.yaml", "bbox_mAP")}
STAGES = ("search", "finetune", "evaluate")


def _cache() -> Path:
    return Path(os.environ.get("FNATUNE_CACHE", Path.home() / ".cache" / "fnatune"))


def run_pipeline(task: str, backend: str, seed: int, workdir: Path) -> dict[str, Any]:
    """One tiny pipeline run: its headline metric and seconds per stage."""
    path, metric = TINY[task]
    cfg = load_config(ROOT / path, [f"backend={backend}", f"seed={seed}", "tracking.enabled=false",
                                    f"data.root={workdir / ('data_' + task)}"])
    t0 = time.perf_counter()
    res = execute(cfg, workdir / f"{task}_{backend}_{seed}", progress=Progress(lambda _: None))
    out = {"metric": res["evaluate"]["metrics"][metric], "total": time.perf_counter() - t0}
    out.update({s: res[s]["hours"] * 3600 for s in STAGES})
    return out


def pipelines(tasks: list[str], seeds: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for task in tasks:
            for seed in range(1, seeds + 1):
                for backend in BACKENDS:  # interleaved: a slow spell of the machine hits both
                    r = run_pipeline(task, backend, seed, Path(d))
                    rows.setdefault((task, backend), []).append(r)
                    print(f"  {task} {backend:11s} seed {seed}: {TINY[task][1]} {r['metric']:.1f}, "
                          + ", ".join(f"{s} {r[s]:.0f} s" for s in STAGES), flush=True)
    print(f"\ntiny pipelines, {seeds} seed(s) per backend (metric: mean [min, max]; seconds: mean per stage)")
    print(f"  {'pipeline':10s} {'backend':11s} {'metric':>22s} " + " ".join(f"{s:>9s}" for s in STAGES))
    for (task, backend), rs in rows.items():
        m = [r["metric"] for r in rs]
        print(f"  {task:10s} {backend:11s} {statistics.mean(m):7.1f} [{min(m):5.1f}, {max(m):5.1f}]  "
              + " ".join(f"{statistics.mean(r[s] for r in rs):9.1f}" for s in STAGES))
    for task in tasks:
        tv, mm = rows[(task, "torchvision")], rows[(task, "mm")]
        spread = max(max(r["metric"] for r in x) - min(r["metric"] for r in x) for x in (tv, mm))
        diff = statistics.mean(r["metric"] for r in tv) - statistics.mean(r["metric"] for r in mm)
        wall = sum(statistics.mean(r[s] for r in tv) for s in STAGES) / sum(statistics.mean(r[s] for r in mm) for s in STAGES)
        print(f"  {task}: torchvision - mm = {diff:+.1f} (run-to-run spread {spread:.1f}); wall time of search + "
              f"finetune + evaluate: torchvision / mm = {wall:.2f}x")


def throughput(batches: int) -> None:
    from data_throughput import data_rate  # this folder is on sys.path when the script runs

    rows = []
    coco = ["data.num_classes=3", "data.generate={num_train: 16, num_val: 1, size: [480, 640], seed: 0, max_objects: 6}"]
    for task, path, over in [
        ("seg", "pipelines/seg.yaml", ["data.generate={num_train: 20, num_val: 1, size: [1024, 2048], seed: 0}"]),
        ("det", "pipelines/det.yaml", coco), ("ssdlite", "pipelines/ssdlite.yaml", coco)]:
        root = _cache() / "benchmarks" / ("cityscapes_full_size" if task == "seg" else "coco_480x640")
        for backend in BACKENDS:
            cfg = load_config(ROOT / path, [*over, f"data.root={root}", "data.num_workers=0", f"backend={backend}"])
            b = get_task(cfg.task).backend_for(cfg)
            b.prepare()
            ds = b.train_set()
            rate = data_rate(ds, min(cfg.finetune.batch_size, len(ds), 8), b.collate, batches)
            rows.append((task, backend, rate))
    print("\ndata throughput, one worker process, the fine-tune pipeline at the paper's input size (samples/s)")
    for task, backend, rate in rows:
        print(f"  {task:8s} {backend:11s} {rate:8.2f}")
    for task in ("seg", "det", "ssdlite"):
        r = {b: rate for t, b, rate in rows if t == task}
        print(f"  {task}: torchvision / mm = {r['torchvision'] / r['mm']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--tasks", nargs="+", default=["seg", "det"], choices=sorted(TINY))
    ap.add_argument("--skip-pipelines", action="store_true")
    ap.add_argument("--batches", type=int, default=4, help="batches timed per data pipeline")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.skip_pipelines:
        pipelines(a.tasks, a.seeds)
    throughput(a.batches)


if __name__ == "__main__":
    main()
