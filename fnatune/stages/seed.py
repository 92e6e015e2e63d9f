"""Stage ``seed``: load the seed network (a torchvision weights name, a checkpoint, or none) and convert it
into our canonical net, or, where no ImageNet weights can be had, pretrain it on generated shapes (cached
by config, so every tiny pipeline and every trial shares one)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from fnatune.arch import Arch
from fnatune.framework import RunContext, StageHandle, eta
from fnatune.io import atomic_torch_save, file_lock
from fnatune.seeds import Seed, load_seed


def seed_of(ctx: RunContext) -> Seed:
    """The run's seed, as the seed stage wrote it (read once per process)."""
    if "seed" not in ctx.cache:
        ctx.cache["seed"] = Seed.load(ctx.path("seed", "seed"))
    return ctx.cache["seed"]


def seed_layout(ctx: RunContext) -> Arch | None:
    """The seed's own layout in the run's space (what the pictures compare against), or None where the space
    cannot express it. Only pictures use it, so nothing here may fail a run."""
    from fnatune.space import get_space

    try:
        return get_space(ctx.cfg.space).project(seed_of(ctx).arch)
    except Exception:
        return None


def stage_seed(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    """Load the seed (torchvision name, checkpoint, none) or pretrain it on generated data (cached)."""
    sc = ctx.cfg.seed_net
    metrics: dict[str, float] = {}
    if sc.weights == "pretrain":
        seed, metrics = pretrained_seed(ctx, st)
    else:
        seed = load_seed(sc.name, weights=sc.weights, **sc.options)
    out = seed.save(st.dir / "seed.pt")
    st.log_params({"seed.name": seed.name, "seed.source": seed.source, "seed.arch": seed.arch.block_string()})
    ctx.cache["seed"] = seed
    return {"outputs": {"seed": ctx.rel(out)}, "metrics": metrics}


def _pretrain_key(ctx: RunContext) -> str:
    payload = {"seed": ctx.cfg.seed_net.name, "options": ctx.cfg.seed_net.options,
               "pretrain": ctx.cfg.pretrain.model_dump(mode="json", exclude={"cache_dir"}), "seed_value": ctx.cfg.seed,
               "torch": torch.__version__.split("+")[0], "v": 2}  # v2: seeded random init
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _cache_root(ctx: RunContext) -> Path:
    pc = ctx.cfg.pretrain
    return Path(pc.cache_dir or Path(os.environ.get("FNATUNE_CACHE", Path.home() / ".cache" / "fnatune")))


def pretrained_seed(ctx: RunContext, st: StageHandle) -> tuple[Seed, dict[str, float]]:
    """Train the seed's classifier on a generated ImageFolder set; reuse a cached result if present."""
    cached = _cache_root(ctx) / "pretrain" / f"{ctx.cfg.seed_net.name}-{_pretrain_key(ctx)}.pt"
    with file_lock(str(cached) + ".lock"):  # concurrent trials: one pretrains, the others read its result
        if cached.exists():
            ctx.progress(f"  seed: pretrained seed read from cache {cached}", force=True)
            return Seed.load(cached), {"pretrain_cached": 1.0}
        return _pretrain(ctx, st, cached)


def _pretrain(ctx: RunContext, st: StageHandle, cached: Path) -> tuple[Seed, dict[str, float]]:
    from fnatune.seeds import seed_from_net

    torch.manual_seed(ctx.cfg.seed)  # before the seed's random init: the pretrained seed is a function of the config
    base = load_seed(ctx.cfg.seed_net.name, weights=None, **ctx.cfg.seed_net.options)
    net, acc = train_classifier(ctx, st, base.arch, base.state_dict, "pretrain")
    seed = seed_from_net(ctx.cfg.seed_net.name, net.backbone, source=f"pretrained by fnatune (val acc {acc:.3f})")
    seed.classifier = {k: v.detach().cpu().clone() for k, v in net.fc.state_dict().items()}
    seed.save(cached)
    ctx.progress(f"  seed: pretrained, val accuracy {acc:.3f}; cached at {cached}", force=True)
    return seed, {"pretrain_val_acc": acc}


def pretrained_arch(ctx: RunContext, st: StageHandle, arch: Arch) -> tuple[dict[str, torch.Tensor], float]:
    """``arch`` trained from a seeded random init with the seed's pretraining recipe (the ``pretrain``
    section): the stand-in for an ImageNet-pretrained target (FNA_SPEC §13.4, Table 5). Cached like the seed,
    keyed by the arch as well. Returns the backbone's state dict and the val accuracy."""
    key = hashlib.sha1((_pretrain_key(ctx) + arch.block_string()).encode()).hexdigest()[:16]
    cached = _cache_root(ctx) / "pretrain" / f"target-{key}.pt"
    with file_lock(str(cached) + ".lock"):
        if cached.exists():
            blob = torch.load(cached, map_location="cpu", weights_only=True)
            ctx.progress(f"  target: pretrained target read from cache {cached}", force=True)
            return blob["state_dict"], float(blob["val_acc"])
        torch.manual_seed(ctx.cfg.seed)
        from fnatune.nets import ChildNet

        net, acc = train_classifier(ctx, st, arch, ChildNet(arch).state_dict(), "pretrain_target")
        state = {k: v.detach().cpu().clone() for k, v in net.backbone.state_dict().items()}
        atomic_torch_save({"state_dict": state, "val_acc": acc, "arch": arch.block_string()}, cached)
        ctx.progress(f"  target: pretrained, val accuracy {acc:.3f}; cached at {cached}", force=True)
        return state, acc


def train_classifier(ctx: RunContext, st: StageHandle, arch: Arch, init: dict[str, torch.Tensor], tag: str
                     ) -> tuple[Any, float]:
    """Train ``arch`` (from the backbone state ``init``) as a classifier on the generated ImageFolder set of the
    ``pretrain`` section; returns the trained :class:`~fnatune.heads.cls.ClassifierNet` (on the CPU) and its
    val accuracy. The work folder ``st.dir / tag`` is removed afterwards."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from fnatune.data import BatchStream
    from fnatune.data.synthetic import generate_classification
    from fnatune.heads.cls import ClassifierNet
    from fnatune.train import Trainer, TrainObserver

    pc = ctx.cfg.pretrain
    # one folder per generated set, so pipelines asking for other sizes never collide
    sub = f"c{pc.num_classes}_t{pc.per_class_train}_v{pc.per_class_val}_s{pc.size}_seed{ctx.cfg.seed}"
    root = generate_classification(Path(pc.data_root) / sub, pc.num_classes, pc.per_class_train, pc.per_class_val,
                                   pc.size, seed=ctx.cfg.seed)
    tf = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train_set, val_set = ImageFolder(str(root / "train"), tf), ImageFolder(str(root / "val"), tf)
    net = ClassifierNet(arch, num_classes=pc.num_classes)
    net.backbone.load_state_dict(init)
    dev = ctx.device()
    net.to(dev)

    def loss_fn(batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(net(x.to(dev)), y.to(dev))

    class Obs(TrainObserver):
        def on_step(self, info: dict[str, Any]) -> None:
            ctx.progress(f"  {tag} it {info['it']}/{info['iters']} loss {info['loss']:.3f} "
                         f"ETA {eta(info['it'], info['iters'], info['elapsed'])}")

        def on_log(self, it: int, metrics: dict[str, float]) -> None:
            st.log_metrics({f"{tag}_{k}": v for k, v in metrics.items()}, it)

    stream = BatchStream(train_set, pc.batch_size, seed=ctx.cfg.seed)
    Trainer(net, loss_fn, stream, pc.loop(), st.dir / tag, Obs(), seed=ctx.cfg.seed).run()
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val_set, batch_size=64):
            correct += int((net(x.to(dev)).argmax(1).cpu() == y).sum())
    shutil.rmtree(st.dir / tag, ignore_errors=True)
    return net.cpu(), correct / len(val_set)
