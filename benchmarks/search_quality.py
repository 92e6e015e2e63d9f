"""Does the search find better architectures than the obvious alternatives, on work a CPU can run?

The task is generated so that the architecture matters at this scale. Each 64x64 image holds two to four
horizontal bars of one grey texture over a noisy background; a coloured key at one end of a bar (red or blue)
gives the class of every pixel of that bar. Away from the key a bar looks the same whichever its class, so a
pixel can only be labelled by a network that sees along its row to the key, up to ``--max-length`` (60) pixels
away: a large receptive field, which larger kernels give and the seed's k3 layout lacks (it sees 59 pixels
across in theory, far fewer in effect).

The seed is a MobileNetV2-like net (k3_e6 everywhere, 2 searchable stages, output stride 8) pretrained on the
generated shape classification set that fnatune pretrains its tiny seeds on (not on this task). Then, with the
library's own parts (remapping, :class:`fnatune.search.Searcher`, :class:`fnatune.train.Trainer`):

1. a search per seed value: the seed remapped into the super net, FNA's alternating weight / arch steps with
   the cost term lambda * log_tau(E[MAdds]), the derived arch and alpha's entropy at the end;
2. the same fine-tune budget (remapped from the seed, same recipe, same seeds) for: each searched arch; the
   seed's own arch; ``--random`` random archs of the space whose MAdds are within 5% of the searched archs'
   mean; each over ``--seeds`` seed values (a searched arch is fine-tuned with its own search's seed);
3. mean +- std of the val mIoU and the backbone MAdds of each, and whether the goal holds: the searched archs
   beat the median random arch and match or beat the seed's arch at no more than the seed's MAdds.

The last line reads ``search quality: goal met`` or ``search quality: goal missed (...)``; it exits 0 either way.

    python benchmarks/search_quality.py [--seeds 3] [--random 5] [--threads 2] [--smoke]

``--smoke`` runs every part at a budget of seconds (a check that the script works, not a measurement).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Subset, TensorDataset

from fnatune.arch import Arch
from fnatune.config.sections import SearchCfg, TrainLoopCfg
from fnatune.cost import count_madds, madds_table
from fnatune.data import BatchStream, split_indices
from fnatune.heads.cls import ClassifierNet
from fnatune.nets import SuperNet
from fnatune.remap import remap
from fnatune.search import Searcher, alpha_entropy
from fnatune.seeds import Seed, seed_from_net
from fnatune.space import SearchSpace, StageSpec
from fnatune.train import Trainer

OPS = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")
SIZE = 64
CLASSES = 3  # background, red-key bars, blue-key bars


@dataclass(frozen=True)
class Budget:
    """Everything that sets how long the benchmark runs."""

    train: int = 384
    val: int = 96
    pretrain_iters: int = 300
    search_epochs: int = 16
    search_warmup: int = 6
    search_steps_per_epoch: int = 24
    finetune_iters: int = 300
    batch: int = 16


SMOKE = Budget(train=32, val=16, pretrain_iters=4, search_epochs=2, search_warmup=1, search_steps_per_epoch=2,
               finetune_iters=4, batch=8)


def context_space() -> SearchSpace:
    """MobileNetV2's first stages at a third of the width and depth, output stride 8: kernel {3,5,7} x
    expansion {3,6} (+ skip) per searchable layer. The seed's k3 layout sees 59 pixels across (theoretically;
    effectively far less), k7 layers up to 163. Small enough that a CPU runs 3 searches and 21 fine-tunes."""
    return SearchSpace(
        name="context", stem_channels=8,
        stages=(StageSpec(8, stride=1, layers=1, ops=("k3_e1",)),
                StageSpec(12, stride=2, layers=2, ops=OPS),
                StageSpec(24, stride=2, layers=3, ops=OPS)),
        taps=("2",), input_size=(SIZE, SIZE), description="search-quality benchmark space")


def seed_arch(space: SearchSpace) -> Arch:
    return space.arch([["k3_e1"]] + [["k3_e6"] * st.layers for st in space.stages[1:]])


# ------------------------------------------------------------------------------------------------ data
def context_images(n: int, seed: int, max_length: int = 60, bars: tuple[int, int] = (2, 4)) -> TensorDataset:
    """``n`` images (3x64x64, already normalised) and their per-pixel labels, from ``seed``.

    Each image holds ``bars`` horizontal bars (8-10 pixels high, ``max_length / 2`` to ``max_length`` long, a few
    pixels apart) of one grey texture over a noisy background. A key at one end of a bar (left or right at
    random: red for class 1, blue for class 2) gives the class of the whole bar, so a pixel at the far end must
    see up to ``max_length`` pixels along its row, and bars of either class lie above and below it.
    """
    rng = np.random.default_rng(seed)
    xs = np.zeros((n, 3, SIZE, SIZE), np.float32)
    ys = np.zeros((n, SIZE, SIZE), np.int64)
    keys = {1: (1.0, -1.0, -1.0), 2: (-1.0, -1.0, 1.0)}
    for i in range(n):
        img = rng.normal(0.0, 0.35, (3, SIZE, SIZE)).astype(np.float32) - 0.6
        lab = np.zeros((SIZE, SIZE), np.int64)
        y = int(rng.integers(0, 6))
        for _ in range(int(rng.integers(bars[0], bars[1] + 1))):
            h = int(rng.integers(8, 11))
            if y + h > SIZE:
                break
            length = int(rng.integers(max_length // 2, max_length + 1))
            x0 = int(rng.integers(0, SIZE - length + 1))
            cls = int(rng.integers(1, 3))
            img[:, y:y + h, x0:x0 + length] = 0.5 + rng.normal(0.0, 0.35, (3, h, length)).astype(np.float32)
            kx = x0 if rng.random() < 0.5 else x0 + length - h
            img[:, y:y + h, kx:kx + h] = np.asarray(keys[cls], np.float32)[:, None, None]
            lab[y:y + h, x0:x0 + length] = cls
            y += h + int(rng.integers(3, 8))
        xs[i], ys[i] = img, lab
    return TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys))


class SegModel(nn.Module):
    """Backbone (a SuperNet or a ChildNet) + a 1x1 classifier on the stride-8 tap, upsampled to the input."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.feature_info[-1].channels, CLASSES, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.head(self.backbone(x)[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False)


def loss_of(model: nn.Module) -> Any:
    return lambda batch: F.cross_entropy(model(batch[0]), batch[1])


@torch.no_grad()
def miou(model: nn.Module, val: TensorDataset) -> float:
    model.eval()
    inter, union = torch.zeros(CLASSES), torch.zeros(CLASSES)
    for x, y in torch.utils.data.DataLoader(val, batch_size=32):
        pred = model(x).argmax(1)
        for c in range(CLASSES):
            inter[c] += ((pred == c) & (y == c)).sum()
            union[c] += ((pred == c) | (y == c)).sum()
    model.train()
    return float((inter / union.clamp_min(1)).mean() * 100)


# ------------------------------------------------------------------------------------------------ parts
def pretrained_seed(space: SearchSpace, b: Budget, work: Path) -> tuple[Seed, float]:
    """The seed's k3_e6 layout trained on the generated shape classification set (6 classes, 64 px)."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from fnatune.data.synthetic import generate_classification

    root = generate_classification(work / "shapes", 6, 60 if b is not SMOKE else 4, 10 if b is not SMOKE else 2, SIZE, seed=0)
    tf = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train, val = ImageFolder(str(root / "train"), tf), ImageFolder(str(root / "val"), tf)
    torch.manual_seed(0)
    net = ClassifierNet(seed_arch(space), num_classes=6)
    loop = TrainLoopCfg(iters=b.pretrain_iters, optim={"name": "sgd", "lr": 0.05, "weight_decay": 4e-5, "grad_clip": None},
                        policy="cosine", warmup_iters=min(30, b.pretrain_iters // 10), log_every=10**6,
                        checkpoint_every=10**6)
    Trainer(net, lambda batch: F.cross_entropy(net(batch[0]), batch[1]), BatchStream(train, min(32, len(train)), seed=0), loop,
            work / "pretrain", seed=0).run()
    net.eval()
    with torch.no_grad():
        acc = float(np.mean([float((net(x).argmax(1) == y).float().mean()) for x, y in
                             torch.utils.data.DataLoader(val, batch_size=64)]))
    return seed_from_net("context_seed", net.backbone, source="pretrained on generated shapes"), acc


def cached_seed(space: SearchSpace, b: Budget, work: Path) -> tuple[Seed, float]:
    """:func:`pretrained_seed`, kept in ``$FNATUNE_CACHE/benchmarks`` (a few minutes on 2 cores) by budget."""
    import hashlib
    import json
    import os

    payload = (json.dumps(seed_arch(space).to_dict(), sort_keys=True), b.pretrain_iters, b is SMOKE,
               torch.__version__.split("+")[0], 1)
    key = hashlib.sha1(repr(payload).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("FNATUNE_CACHE", Path.home() / ".cache" / "fnatune")) / "benchmarks"
    path = cache / f"search_quality_seed_{key}.pt"
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return Seed.load(path.with_suffix(".seed.pt")), float(blob["acc"])
    seed, acc = pretrained_seed(space, b, work)
    cache.mkdir(parents=True, exist_ok=True)
    seed.save(path.with_suffix(".seed.pt"))
    torch.save({"acc": acc}, path)
    return seed, acc


@dataclass
class Searched:
    arch: Arch
    entropy: float
    uniform_entropy: float
    seconds: float


def search(seed: Seed, space: SearchSpace, train: TensorDataset, b: Budget, s: int, work: Path,
           settings: dict[str, Any]) -> Searched:
    torch.manual_seed(s)
    sup, _ = remap(seed, space)
    assert isinstance(sup, SuperNet)
    model = SegModel(sup)
    a, w = split_indices(len(train), 0.5, seed=520 + s)
    cfg = SearchCfg.model_validate({
        "epochs": b.search_epochs, "warmup_epochs": b.search_warmup, "steps_per_epoch": b.search_steps_per_epoch,
        "batch_size": b.batch, "checkpoint_every": 0,
        "weight_optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 4e-5, "grad_clip": 35},
        "weight_lr": {"policy": "cosine", "milestones": [], "warmup_iters": 20, "warmup_ratio": 0.1},
        **settings})
    t0 = time.perf_counter()
    res = Searcher(model, sup, loss_of(model), BatchStream(Subset(train, a), b.batch, seed=s),
                   BatchStream(Subset(train, w), b.batch, seed=s + 100), madds_table(sup), cfg, work / f"search{s}",
                   seed=s).run()
    assert res is not None
    probs = [torch.tensor(p) for p in res.probabilities]
    uniform = alpha_entropy([torch.full((len(p),), 1.0 / len(p)) for p in probs])
    return Searched(res.arch, alpha_entropy(probs), uniform, time.perf_counter() - t0)


def finetune(seed: Seed, arch: Arch, train: TensorDataset, val: TensorDataset, b: Budget, s: int, work: Path) -> float:
    torch.manual_seed(s)
    child, _ = remap(seed, arch)
    model = SegModel(child)
    loop = TrainLoopCfg(iters=b.finetune_iters, optim={"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                                       "weight_decay": 4e-5, "grad_clip": None},
                        policy="poly", warmup_iters=min(20, b.finetune_iters // 10), warmup_ratio=0.1,
                        log_every=10**6, checkpoint_every=10**6)
    Trainer(model, loss_of(model), BatchStream(train, b.batch, seed=s + 7), loop, work, seed=s).run()
    return miou(model, val)


_TABLE: dict[str, Any] = {}


def backbone_madds(arch: Arch) -> float:
    """MAdds (millions) of the backbone alone at 64x64 (the head is the same for every arch), from the space's
    MAdds table; the seed's layout is checked against a counted forward pass once."""
    if "table" not in _TABLE:
        from fnatune.nets import ChildNet

        space = context_space()
        _TABLE["table"] = table = madds_table(space)
        seed = seed_arch(space)
        assert table.of_arch(seed) * 1e9 + table.fixed_madds == count_madds(ChildNet(seed), (SIZE, SIZE))
    table = _TABLE["table"]
    return (table.of_arch(arch) * 1e9 + table.fixed_madds) / 1e6


def matched_random(space: SearchSpace, target: float, n: int, rng: random.Random, exclude: set[str]
                   ) -> list[Arch]:
    """``n`` distinct uniform samples of the space whose MAdds are within 5% of ``target``."""
    found: dict[str, Arch] = {}
    for _ in range(200_000):
        a = space.sample(rng)
        key = a.block_string()
        if key in found or key in exclude:
            continue
        if abs(backbone_madds(a) / target - 1) <= 0.05:
            found[key] = a
            if len(found) == n:
                break
    return list(found.values())


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):5.1f} +- {sd:4.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--random", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=60, help="longest bar (pixels) of the generated task")
    ap.add_argument("--lam", type=float, default=0.05, help="lambda of the cost term (log base 10, MAdds in G)")
    ap.add_argument("--arch-lr", type=float, default=0.1, help="Adam's lr for alpha")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--smoke", action="store_true", help="seconds-long budget: checks the script, measures nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = SMOKE if args.smoke else Budget()
    space = context_space()
    settings = {"cost": {"lambda": args.lam, "log_base": 10.0}, "temperature": args.temperature,
                "arch_optim": {"name": "adam", "lr": args.arch_lr, "betas": (0.5, 0.999), "weight_decay": 1e-3}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = context_images(b.train, 1, args.max_length)
        val = context_images(b.val, 2, args.max_length)
        seed, acc = cached_seed(space, b, work)
        print(f"seed: {seed.arch.block_string()}, pretrained on generated shapes (val acc {acc:.2f})", flush=True)
        seeds = list(range(args.seeds))
        searched = [search(seed, space, train, b, s, work, settings) for s in seeds]
        for s, r in zip(seeds, searched):
            print(f"search seed {s}: {r.arch.block_string()}  alpha entropy {r.entropy:.3f} "
                  f"(uniform {r.uniform_entropy:.3f}, ratio {r.entropy / r.uniform_entropy:.2f}), {r.seconds:.0f} s",
                  flush=True)
        target = statistics.fmean(backbone_madds(r.arch) for r in searched)
        seed_key = seed.arch.block_string()
        randoms = matched_random(space, target, args.random, random.Random(12345),
                                 {seed_key, *(r.arch.block_string() for r in searched)})
        rows: list[tuple[str, Arch, list[float]]] = []
        scores = [finetune(seed, r.arch, train, val, b, s, work / f"ft_searched{s}") for s, r in zip(seeds, searched)]
        rows.append(("searched", searched[0].arch, scores))
        rows.append(("seed", seed.arch, [finetune(seed, seed.arch, train, val, b, s, work / f"ft_seed{s}")
                                         for s in seeds]))
        for i, a in enumerate(randoms):
            rows.append((f"random {i + 1}", a, [finetune(seed, a, train, val, b, s, work / f"ft_r{i}_{s}")
                                                for s in seeds]))
            print(f"  finetuned random {i + 1}/{len(randoms)}", flush=True)
    print(f"\nsearch quality: 64x64 key-bar segmentation, {len(seeds)} seeds, fine-tune {b.finetune_iters} "
          f"iterations each, {time.perf_counter() - t_all:.0f} s in all")
    print(f"{'arch':<10} {'MAdds (M)':>9}  {'mIoU mean +- std':>16}  per seed       block string")
    madds = {name: (statistics.fmean(backbone_madds(r.arch) for r in searched) if name == "searched"
                    else backbone_madds(a)) for name, a, _ in rows}
    for name, a, scores in rows:
        arch_str = "(one per search seed)" if name == "searched" and len({r.arch.block_string() for r in searched}) > 1 \
            else a.block_string()
        print(f"{name:<10} {madds[name]:9.2f}  {_ms(scores):>16}  "
              f"{' '.join(f'{v:4.1f}' for v in scores):<14} {arch_str}")
    mean = {name: statistics.fmean(scores) for name, _, scores in rows}
    random_means = [mean[n] for n, _, _ in rows if n.startswith("random")]
    ratio = max(r.entropy / r.uniform_entropy for r in searched)
    problems = []
    if len(randoms) < args.random:
        problems.append(f"only {len(randoms)} random archs within 5% of {target:.2f} M MAdds")
    if random_means and not mean["searched"] > statistics.median(random_means):
        problems.append(f"searched {mean['searched']:.1f} <= median random {statistics.median(random_means):.1f}")
    if mean["searched"] < mean["seed"]:
        problems.append(f"searched {mean['searched']:.1f} < seed arch {mean['seed']:.1f}")
    if madds["searched"] > madds["seed"]:
        problems.append(f"searched MAdds {madds['searched']:.2f} M > seed's {madds['seed']:.2f} M")
    if ratio > 0.8:
        problems.append(f"alpha entropy {ratio:.2f} of uniform (not clearly below it)")
    print(f"alpha entropy at the end of each search / uniform: "
          f"{', '.join(f'{r.entropy / r.uniform_entropy:.2f}' for r in searched)}")
    print("search quality: goal met" if not problems else f"search quality: goal missed ({'; '.join(problems)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
