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

1. a search per search seed (``--seeds``, 5): the seed remapped into the super net, FNA's alternating weight / arch
   steps with the cost term lambda * log_tau(E[MAdds]), the derived arch and alpha's entropy at the end;
2. the same fine-tune budget (remapped from the seed, same recipe) over the same fine-tune seeds (``--ft-seeds``, 2)
   for: each searched arch; the seed's own arch; ``--random`` (10) random archs of the space whose MAdds are within
   5% of the searched archs' mean. An arch's score is its mean val mIoU over the fine-tune seeds;
3. random search at equal total cost: ``--rs-n`` (4) more matched random archs, each fine-tuned with 1/N of what
   one search plus one fine-tune cost (measured in seconds and turned into iterations), the best of them by val
   mIoU, once per fine-tune seed; beside it, that pick fine-tuned as every other arch is (the arch's own quality,
   apart from its longer fine-tune and its selection on the val score it reports);
4. the searched pool against the random pool: the difference of the searched mean and the random median, a 95%
   bootstrap interval of it (archs resampled within each pool), and a one-sided Mann-Whitney rank test (exact);
   how much the searched archs agree (the share of identical ops per layer, over pairs of search seeds) and alpha's
   entropy at the end (at the search's final temperature).

``--configs`` compares ways to search and derive (:data:`CONFIGS`): ``fna`` (the toolkit's default: FNA's constant
temperature and argmax), ``paths`` (``search.derive.method: paths``), ``anneal`` (``search.temperature_final``,
``--anneal-to``) and ``anneal+paths``. Configurations that differ only in the derivation share their searches; every
arch is fine-tuned once per fine-tune seed however many configurations derive it. Each configuration is compared with
random archs matched to its own mean MAdds (one shared pool where the means are within 5%), and gets its own verdict.
Four configurations took 31 minutes here, two 24 (a random pool per configuration is most of it).

Goal (issue 27): the searched mean beats the random median by more than the larger of the two pools' standard
deviations, with an interval that excludes 0, and matches or beats random search at equal total cost. The last line
reads ``search quality: goal met`` or ``search quality: goal missed (...)``; it exits 0 either way.

    python benchmarks/search_quality.py [--configs fna[,paths,anneal,anneal+paths]] [--seeds 5] [--seed-offset 0]
                                        [--random 10] [--ft-seeds 2] [--rs-n 4] [--threads 2] [--smoke]

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
from fnatune.config.sections import DeriveCfg, SearchCfg, TrainLoopCfg
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
    searcher: Searcher | None = None


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
    searcher = Searcher(model, sup, loss_of(model), BatchStream(Subset(train, a), b.batch, seed=s),
                        BatchStream(Subset(train, w), b.batch, seed=s + 100), madds_table(sup), cfg,
                        work / f"search{s}", seed=s)
    res = searcher.run()
    assert res is not None
    probs = [torch.tensor(p) for p in res.probabilities]
    uniform = alpha_entropy([torch.full((len(p),), 1.0 / len(p)) for p in probs])
    return Searched(res.arch, alpha_entropy(probs), uniform, time.perf_counter() - t0, searcher)


def finetune(seed: Seed, arch: Arch, train: TensorDataset, val: TensorDataset, b: Budget, s: int, work: Path,
             iters: int | None = None) -> float:
    torch.manual_seed(s)
    child, _ = remap(seed, arch)
    model = SegModel(child)
    iters = iters or b.finetune_iters
    loop = TrainLoopCfg(iters=iters, optim={"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                                       "weight_decay": 4e-5, "grad_clip": None},
                        policy="poly", warmup_iters=min(20, iters // 10), warmup_ratio=0.1,
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


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def bootstrap_interval(searched: list[float], pool: list[float], n: int = 10_000, seed: int = 0
                       ) -> tuple[float, float]:
    """95% percentile interval of mean(searched) - median(pool), archs resampled with replacement in each pool."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(searched), np.asarray(pool)
    diffs = (rng.choice(a, (n, len(a))).mean(axis=1) - np.median(rng.choice(b, (n, len(b))), axis=1))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def mann_whitney_greater(x: list[float], y: list[float]) -> tuple[float, float]:
    """U of ``x`` over ``y`` and the exact one-sided p-value that x is stochastically greater (all splits of the
    pooled values; ties count half)."""
    from itertools import combinations

    def u(xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
        return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in xs for b in ys)

    pooled = tuple(x) + tuple(y)
    observed = u(tuple(x), tuple(y))
    count = total = 0
    for idx in combinations(range(len(pooled)), len(x)):
        chosen = set(idx)
        xs = tuple(pooled[i] for i in idx)
        ys = tuple(pooled[i] for i in range(len(pooled)) if i not in chosen)
        total += 1
        count += u(xs, ys) >= observed - 1e-12
    return observed, count / total


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-a of two paired lists: (concordant - discordant pairs) / all pairs; ties count 0."""
    from itertools import combinations

    pairs = list(combinations(range(len(x)), 2))
    if not pairs:
        return 0.0
    sign = lambda v: (v > 0) - (v < 0)
    return sum(sign(x[i] - x[j]) * sign(y[i] - y[j]) for i, j in pairs) / len(pairs)


def supernet_ranking(searcher: Searcher, archs: list[Arch], miou: list[float], batches: int) -> float:
    """How well one search's super net ranks ``archs`` by their fine-tuned mIoU: Kendall's tau between minus each
    arch's single-path task loss on ``batches`` batches of the arch split (what ``search.derive.method: paths``
    ranks by, before the cost term) and its mIoU. 1: the super net orders them as fine-tuning does."""
    from fnatune.derive import score_paths

    data = [searcher.arch_stream.next() for _ in range(batches)]
    paths = [searcher.cost.indices_of(a) for a in archs]
    scored = score_paths(searcher.model, searcher.supernet, searcher.loss_fn, data, paths, searcher.cost.of_indices,
                         searcher.cost_term, searcher.s.cost.lam)
    return kendall_tau([-e["task_loss"] for e in scored], miou)


def agreement(archs: list[Arch]) -> float:
    """Share of identical ops per searchable layer, averaged over pairs of archs (1: all identical)."""
    from itertools import combinations

    layers = [[op for stage in a.ops[1:] for op in stage] for a in archs]
    pairs = list(combinations(layers, 2))
    if not pairs:
        return 1.0
    return statistics.fmean(sum(p == q for p, q in zip(a, b)) / len(a) for a, b in pairs)


#: what ``--configs`` can name: the search's settings beyond the benchmark's own, and how the arch is derived.
#: Configurations with the same search settings share their searches (only the derivation differs).
CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "fna": ({}, {"method": "argmax"}),
    "paths": ({}, {"method": "paths"}),
    "anneal": ({"anneal": True}, {"method": "argmax"}),
    "anneal+paths": ({"anneal": True}, {"method": "paths"}),
}


@dataclass
class ConfigResult:
    name: str
    searched: list[Searched]
    archs: list[Arch]
    derive_seconds: float
    scores: list[list[float]] | None = None


def goal_problems(s_mean: float, r_med: float, spread: float, lo: float, hi: float, rs: float) -> list[str]:
    """What keeps a configuration from the issue's goal (empty: met)."""
    problems = []
    if not s_mean - r_med > spread:
        problems.append(f"searched mean - random median {s_mean - r_med:+.1f} <= larger spread {spread:.1f}")
    if not lo > 0:
        problems.append(f"bootstrap interval [{lo:+.1f}, {hi:+.1f}] does not exclude 0")
    if s_mean < rs:
        problems.append(f"searched {s_mean:.1f} < random search at equal cost {rs:.1f}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="search seeds (one search each)")
    ap.add_argument("--seed-offset", type=int, default=0, help="the first search seed (another set: --seed-offset 5)")
    ap.add_argument("--random", type=int, default=10, help="random archs at matched MAdds")
    ap.add_argument("--ft-seeds", type=int, default=2, help="fine-tune seeds every arch is fine-tuned over")
    ap.add_argument("--rs-n", type=int, default=4, help="archs of random search at equal total cost")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=60, help="longest bar (pixels) of the generated task")
    ap.add_argument("--lam", type=float, default=0.05, help="lambda of the cost term (log base 10, MAdds in G)")
    ap.add_argument("--arch-lr", type=float, default=0.1, help="Adam's lr for alpha")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--configs", default="fna",
                    help=f"comma-separated configurations to compare ({', '.join(CONFIGS)}; default fna)")
    ap.add_argument("--anneal-to", type=float, default=0.2, help="final temperature of the anneal configurations")
    ap.add_argument("--top-k", type=int, default=8, help="paths scored by the paths configurations")
    ap.add_argument("--score-batches", type=int, default=4, help="arch-split batches each scored path runs on")
    ap.add_argument("--smoke", action="store_true", help="seconds-long budget: checks the script, measures nothing")
    args = ap.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        ap.error(f"--configs: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(CONFIGS)}")
    torch.set_num_threads(args.threads)
    b = SMOKE if args.smoke else Budget()
    space = context_space()
    base = {"cost": {"lambda": args.lam, "log_base": 10.0}, "temperature": args.temperature,
            "arch_optim": {"name": "adam", "lr": args.arch_lr, "betas": (0.5, 0.999), "weight_decay": 1e-3}}

    def search_settings(name: str) -> dict[str, Any]:
        extra = CONFIGS[name][0]
        return {**base, **({"temperature_final": args.anneal_to} if extra.get("anneal") else {})}

    def derive_settings(name: str) -> DeriveCfg:
        return DeriveCfg.model_validate({**CONFIGS[name][1], "top_k": args.top_k, "batches": args.score_batches})

    t_all = time.perf_counter()
    ft_seeds = list(range(args.ft_seeds))
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = context_images(b.train, 1, args.max_length)
        val = context_images(b.val, 2, args.max_length)
        seed, acc = cached_seed(space, b, work)
        print(f"seed: {seed.arch.block_string()}, pretrained on generated shapes (val acc {acc:.2f})", flush=True)
        groups: dict[str, list[Searched]] = {}  # searches by their settings, shared by configurations
        results: list[ConfigResult] = []
        for name in names:
            settings = search_settings(name)
            key = repr(sorted(settings.items()))
            if key not in groups:
                groups[key] = []
                for s in seeds:
                    r = search(seed, space, train, b, s, work / f"g{len(groups)}", settings)
                    groups[key].append(r)
                    print(f"[{name}] search seed {s}: argmax {r.arch.block_string()}  alpha entropy {r.entropy:.3f} "
                          f"(uniform {r.uniform_entropy:.3f}, ratio {r.entropy / r.uniform_entropy:.2f}), "
                          f"{r.seconds:.0f} s", flush=True)
            done = groups[key]
            t0 = time.perf_counter()
            archs = []
            for r in done:
                assert r.searcher is not None
                archs.append(r.searcher.derive(derive_settings(name)).arch)
            seconds = (time.perf_counter() - t0) / len(done)
            if CONFIGS[name][1]["method"] != "argmax":
                for s, a in zip(seeds, archs):
                    print(f"[{name}] search seed {s}: derived {a.block_string()}", flush=True)
            results.append(ConfigResult(name, done, archs, seconds))

        cache: dict[tuple[str, int, int], float] = {}
        timing = {"seconds": 0.0, "n": 0}

        def score(a: Arch, iters: int | None = None) -> list[float]:
            out = []
            for f in ft_seeds:
                key = (a.block_string(), f, iters or b.finetune_iters)
                if key not in cache:
                    t0 = time.perf_counter()
                    cache[key] = finetune(seed, a, train, val, b, f, work / f"ft{len(cache)}", iters)
                    if iters is None:
                        timing["seconds"] += time.perf_counter() - t0
                        timing["n"] += 1
                out.append(cache[key])
            return out

        for res in results:
            res.scores = [score(a) for a in res.archs]
        ft_seconds = timing["seconds"] / max(timing["n"], 1)
        print(f"  fine-tuned the searched archs ({ft_seconds:.1f} s per fine-tune)", flush=True)
        seed_scores = score(seed.arch)
        taken = {seed.arch.block_string(), *(a.block_string() for r in results for a in r.archs)}
        # one random pool matched to the mean MAdds of every configuration's archs; a configuration whose own mean
        # is more than 5% away gets a pool of its own
        target = statistics.fmean(backbone_madds(a) for r in results for a in r.archs)
        pools: dict[float, list[Arch]] = {target: matched_random(space, target, args.random, random.Random(12345), taken)}
        pool_of: dict[str, float] = {}
        for res in results:
            mine = statistics.fmean(backbone_madds(a) for a in res.archs)
            t = target if abs(mine / target - 1) <= 0.05 else mine
            if t not in pools:
                pools[t] = matched_random(space, t, args.random, random.Random(12345), taken)
            pool_of[res.name] = t
        taken |= {a.block_string() for pool in pools.values() for a in pool}  # random search draws fresh archs
        random_scores: dict[float, list[list[float]]] = {}
        for t, pool in pools.items():
            random_scores[t] = []
            for i, a in enumerate(pool):
                random_scores[t].append(score(a))
                print(f"  fine-tuned random {i + 1}/{len(pool)} (pool at {t:.2f} M MAdds)", flush=True)
        # random search at equal total cost: one search (and its derivation) + one fine-tune, in fine-tune
        # iterations, split over N archs; the costliest configuration's cost, so no configuration is flattered
        search_seconds = max(statistics.fmean(r.seconds for r in res.searched) + res.derive_seconds for res in results)
        total_iters = b.finetune_iters * (1 + search_seconds / ft_seconds)
        rs_iters = max(1, int(total_iters / args.rs_n))
        rs_best, rs_rescored = [], []
        for f in ft_seeds:
            rs_pool = matched_random(space, target, args.rs_n, random.Random(777 + f), taken)
            got = [finetune(seed, a, train, val, b, f, work / f"ft_rs{f}_{j}", iters=rs_iters)
                   for j, a in enumerate(rs_pool)]
            best = max(range(len(got)), key=lambda j: got[j])
            rs_best.append(got[best])
            # its pick fine-tuned as every other arch is (same iterations, same seed): the arch's own quality,
            # apart from random search's longer fine-tunes and its pick by the val score it reports
            rs_rescored.append(finetune(seed, rs_pool[best], train, val, b, f, work / f"ft_rs{f}_pick"))
        print(f"  random search: {args.rs_n} archs x {rs_iters} iterations per fine-tune seed "
              f"(= one search {search_seconds:.0f} s + one fine-tune {b.finetune_iters} iterations)", flush=True)
        # does the super net know which archs fine-tune well? every fine-tuned arch (searched, seed, random pools),
        # ranked by each search of the first configuration
        ranked = {a.block_string(): a for r in results for a in r.archs}
        ranked.update({a.block_string(): a for pool in pools.values() for a in pool})
        ranked[seed.arch.block_string()] = seed.arch
        scored_archs = list(ranked.values())
        finetuned = [statistics.fmean(score(a)) for a in scored_archs]
        taus = [supernet_ranking(r.searcher, scored_archs, finetuned, args.score_batches)
                for r in results[0].searched if r.searcher is not None]
    rs = statistics.fmean(rs_best)
    print(f"\nsearch quality: 64x64 key-bar segmentation, {len(seeds)} search seeds, every arch fine-tuned "
          f"{b.finetune_iters} iterations over {len(ft_seeds)} fine-tune seeds, {time.perf_counter() - t_all:.0f} s in all")
    print(f"{'arch':<11} {'MAdds (M)':>9}  {'mIoU':>5}  per fine-tune seed  block string")

    def row(label: str, a: Arch, v: list[float]) -> None:
        print(f"{label:<11} {backbone_madds(a):9.2f}  {statistics.fmean(v):5.1f}  "
              f"{' '.join(f'{x:4.1f}' for x in v):<19} {a.block_string()}")

    for res in results:
        assert res.scores is not None
        if len(results) > 1:
            print(f"[{res.name}]")
        for i, (a, v) in enumerate(zip(res.archs, res.scores)):
            row(f"searched {i}", a, v)
    row("seed", seed.arch, seed_scores)
    for t, pool in pools.items():
        if len(pools) > 1:
            print(f"[random pool at {t:.2f} M MAdds]")
        for i, (a, v) in enumerate(zip(pool, random_scores[t])):
            row(f"random {i + 1}", a, v)
    print(f"random search at equal total cost (best of {args.rs_n} at {rs_iters} iterations): "
          f"{' '.join(f'{x:.1f}' for x in rs_best)}, mean {rs:.1f}; its picks fine-tuned {b.finetune_iters} "
          f"iterations as the others: {' '.join(f'{x:.1f}' for x in rs_rescored)}, mean "
          f"{statistics.fmean(rs_rescored):.1f}; seed's arch {statistics.fmean(seed_scores):.1f}")
    print(f"super net's ranking of the {len(scored_archs)} fine-tuned archs (single-path task loss on the arch split) "
          f"against their mIoU, per search of [{results[0].name}]: Kendall tau {' '.join(f'{t:+.2f}' for t in taus)}, "
          f"mean {statistics.fmean(taus):+.2f}")
    verdicts: dict[str, list[str]] = {}
    for res in results:
        assert res.scores is not None
        searched_means = [statistics.fmean(v) for v in res.scores]
        randoms = [statistics.fmean(v) for v in random_scores[pool_of[res.name]]] or [0.0]
        s_mean, r_med = statistics.fmean(searched_means), statistics.median(randoms)
        spread = max(_sd(searched_means), _sd(randoms))
        lo, hi = bootstrap_interval(searched_means, randoms)
        u, p = mann_whitney_greater(searched_means, randoms)
        ratios = [r.entropy / r.uniform_entropy for r in res.searched]
        madds = statistics.fmean(backbone_madds(a) for a in res.archs)
        print(f"\n[{res.name}] searched {_ms(searched_means)} (n={len(searched_means)}, {madds:.2f} M MAdds), "
              f"random pool median {r_med:.1f}, {_ms(randoms)} (n={len(randoms)}, {pool_of[res.name]:.2f} M MAdds)")
        print(f"[{res.name}] searched mean - random median: {s_mean - r_med:+.1f} mIoU, 95% bootstrap interval "
              f"[{lo:+.1f}, {hi:+.1f}]; larger spread {spread:.1f}; Mann-Whitney U {u:.0f}, one-sided p {p:.3f}")
        print(f"[{res.name}] stability: the derived archs agree on {agreement(res.archs) * 100:.0f}% of layers (pairs of "
              f"search seeds); alpha entropy at the end / uniform: {', '.join(f'{x:.2f}' for x in ratios)}")
        problems = goal_problems(s_mean, r_med, spread, lo, hi, rs)
        if len(pools[pool_of[res.name]]) < args.random:
            problems.insert(0, f"only {len(pools[pool_of[res.name]])} random archs within 5% of "
                               f"{pool_of[res.name]:.2f} M MAdds")
        verdicts[res.name] = problems
        print(f"[{res.name}] goal " + ("met" if not problems else f"missed ({'; '.join(problems)})"))
    if len(results) == 1:
        problems = verdicts[results[0].name]
        print("search quality: goal met" if not problems else f"search quality: goal missed ({'; '.join(problems)})")
    else:
        met = [n for n, pr in verdicts.items() if not pr]
        print(f"search quality: goal met by {', '.join(met)}" if met else
              "search quality: goal missed by every configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
