"""Does data loading keep up with a GPU step? Samples per second of the seg and det training pipelines
(mmseg / mmdet transforms, our batch streams, the task's collate) in one worker process, beside the
model's step time on this machine, at the paper's input sizes.

The data are generated in the real on-disk layouts (Cityscapes PNGs at 1024x2048, COCO JPEGs at 480x640, a
typical COCO size) under $FNATUNE_CACHE/benchmarks. One worker's rate is the in-process rate
(``num_workers: 0`` runs the same code a DataLoader worker runs). The GPU rates the paper's recipes consume are
derived from its own reported times (FNA_SPEC §13.1, §13.2): samples per step x steps / GPU-seconds; the workers
a GPU needs = that rate / one worker's rate, rounded up.

    python benchmarks/data_throughput.py [--batches 4] [--model-batch 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from fnatune.arch import Arch
from fnatune.config import load_config
from fnatune.data.stream import BatchStream
from fnatune.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
# samples/s one GPU consumes in the paper's recipes, from its reported times (FNA_SPEC §13.1-13.2):
#  seg search: 80 epochs x 4 x (20% of 2975 / 16) weight steps, + the same arch steps in the last 50, x 16
#  images, in 1.4 V100-hours; seg fine-tune: 100K iterations x 16 in 8.5 h on 4 TITAN Xp.
SEG_SEARCH_STEPS = 80 * 4 * (595 // 16) + 50 * 4 * (595 // 16)
PAPER_RATE = {"seg search": SEG_SEARCH_STEPS * 16 / (1.4 * 3600), "seg finetune": 100_000 * 16 / (8.5 * 3600 * 4)}


def _cache() -> Path:
    return Path(os.environ.get("FNATUNE_CACHE", Path.home() / ".cache" / "fnatune")) / "benchmarks"


def backend_for(task: str) -> Any:
    if task == "seg":
        over = [f"data.root={_cache() / 'cityscapes_full_size'}",
                "data.generate={num_train: 20, num_val: 1, size: [1024, 2048], seed: 0}", "data.num_workers=0"]
        cfg = load_config(ROOT / "pipelines" / "seg.yaml", over)
    else:
        over = [f"data.root={_cache() / 'coco_480x640'}", "data.num_classes=3",
                "data.generate={num_train: 16, num_val: 1, size: [480, 640], seed: 0, max_objects: 6}",
                "data.num_workers=0"]
        cfg = load_config(ROOT / "pipelines" / "det.yaml", over)
    backend = get_task(cfg.task).backend_for(cfg)
    backend.prepare()
    return cfg, backend


def data_rate(dataset: Any, batch: int, collate: Any, batches: int) -> float:
    """Samples per second of one worker: batches assembled and collated in this process."""
    stream = BatchStream(dataset, batch, collate, seed=0, num_workers=0)
    stream.next()  # first-batch costs (file handles, lazy imports)
    t0 = time.perf_counter()
    for _ in range(batches):
        stream.next()
    return batches * batch / (time.perf_counter() - t0)


def model_rate(cfg: Any, backend: Any, dataset: Any, batch: int, repeats: int) -> float:
    """Samples per second of a fine-tune train step (forward, backward, SGD) of MobileNetV2's own layout."""
    arch = Arch.load(ROOT / "search_spaces" / "archs" / ("mbv2_seg.json" if cfg.task == "seg" else "mbv2_retinanet.json"))
    model = backend.model(dict(type="FNABackbone", arch=arch.to_dict(), weights=None), arch, "finetune").train()
    loss_fn = backend.loss_fn(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    stream = BatchStream(dataset, batch, backend.collate, seed=1, num_workers=0)
    data = [stream.next() for _ in range(repeats + 1)]

    def step(b: Any) -> None:
        loss = loss_fn(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(data[0])
    t0 = time.perf_counter()
    for b in data[1:]:
        step(b)
    return repeats * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=4, help="batches timed per pipeline")
    ap.add_argument("--model-batch", type=int, default=2, help="batch of the timed model steps (CPU memory)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for task in ("seg", "det"):
        cfg, backend = backend_for(task)
        arch_set, _ = backend.search_sets()  # the augmented pipeline in both recipes
        pipelines = {f"{task} search": (arch_set, cfg.search.batch_size),
                     f"{task} finetune": (backend.train_set(), cfg.finetune.batch_size)}
        for name, (ds, batch) in pipelines.items():
            rate = data_rate(ds, min(batch, len(ds)), backend.collate, a.batches)
            rows.append((name, batch, rate))
        m = model_rate(cfg, backend, backend.train_set(), a.model_batch, a.repeats)
        rows.append((f"{task} finetune model step (CPU, {a.threads} threads)", a.model_batch, m))
    print(f"one worker process, {a.threads} torch threads; paper-recipe inputs; samples/s")
    for name, batch, rate in rows:
        print(f"  {name:44s} batch {batch:3d}   {rate:8.2f} samples/s")
    data = {name: rate for name, _, rate in rows}
    for name, gpu in PAPER_RATE.items():
        need = math.ceil(gpu / data[name])
        print(f"  {name}: the paper's GPU consumed {gpu:.1f} samples/s -> {need} worker(s) at {data[name]:.2f}/s each")
    ratio = data["seg finetune"] / data[f"seg finetune model step (CPU, {a.threads} threads)"]
    print(f"seg finetune: one worker / CPU model step = {ratio:.1f}x")


if __name__ == "__main__":
    main()
