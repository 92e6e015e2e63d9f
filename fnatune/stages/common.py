"""Task-independent stages: the seed (loaded or pretrained), remapping (twice, always from the seed)
and export. Each returns ``{"outputs": {key: path relative to the run dir}, "metrics": {...}}``."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from fnatune.arch import Arch
from fnatune.errors import FnatuneError
from fnatune.io import atomic_torch_save
from fnatune.pipeline import RunContext, StageHandle, eta
from fnatune.seeds import Seed, load_seed


def rel(ctx: RunContext, path: Path) -> str:
    return str(Path(path).resolve().relative_to(ctx.run_dir.resolve()))


def device(ctx: RunContext) -> torch.device:
    dev = torch.device(ctx.cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FnatuneError(f"device: '{ctx.cfg.device}' asked for, but CUDA is not available; use --set device=cpu")
    return dev


# ------------------------------------------------------------------------------------------ seed I/O
def save_seed(seed: Seed, path: Path) -> Path:
    return atomic_torch_save({"format": "fnatune-seed", "name": seed.name, "arch": json.dumps(seed.arch.to_dict()),
                              "state_dict": seed.state_dict, "classifier": seed.classifier, "source": seed.source},
                             path)


def read_seed(path: Path) -> Seed:
    d = torch.load(path, map_location="cpu", weights_only=True)
    if d.get("format") != "fnatune-seed":
        raise FnatuneError(f"{path} is not a fnatune seed file")
    return Seed(d["name"], Arch.from_dict(json.loads(d["arch"])), d["state_dict"], d["classifier"], d["source"])


def seed_of(ctx: RunContext) -> Seed:
    if "seed" not in ctx.cache:
        ctx.cache["seed"] = read_seed(ctx.path("seed", "seed"))
    return ctx.cache["seed"]


# ------------------------------------------------------------------------------------------ stages
def stage_seed(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    """Load the seed (torchvision name, checkpoint, none) or pretrain it on generated data (cached)."""
    sc = ctx.cfg.seed_net
    metrics: dict[str, float] = {}
    if sc.weights == "pretrain":
        seed, metrics = pretrained_seed(ctx, st)
    else:
        seed = load_seed(sc.name, weights=sc.weights, **sc.options)
    out = save_seed(seed, st.dir / "seed.pt")
    st.log_params({"seed.name": seed.name, "seed.source": seed.source, "seed.arch": seed.arch.block_string()})
    ctx.cache["seed"] = seed
    return {"outputs": {"seed": rel(ctx, out)}, "metrics": metrics}


def _pretrain_key(ctx: RunContext) -> str:
    payload = {"seed": ctx.cfg.seed_net.name, "options": ctx.cfg.seed_net.options,
               "pretrain": ctx.cfg.pretrain.model_dump(mode="json", exclude={"cache_dir"}), "seed_value": ctx.cfg.seed,
               "torch": torch.__version__.split("+")[0], "v": 2}  # v2: seeded random init
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_seed(ctx: RunContext, st: StageHandle) -> tuple[Seed, dict[str, float]]:
    """Train the seed's classifier on a generated ImageFolder set; reuse a cached result if present."""
    pc = ctx.cfg.pretrain
    cache_root = Path(pc.cache_dir or Path(os.environ.get("FNATUNE_CACHE", Path.home() / ".cache" / "fnatune")))
    cached = cache_root / "pretrain" / f"{ctx.cfg.seed_net.name}-{_pretrain_key(ctx)}.pt"
    from fnatune.io import file_lock

    with file_lock(str(cached) + ".lock"):  # concurrent trials: one pretrains, the others read its result
        return _pretrain_or_read(ctx, st, cached)


def _pretrain_or_read(ctx: RunContext, st: StageHandle, cached: Path) -> tuple[Seed, dict[str, float]]:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from fnatune.data import BatchStream
    from fnatune.data.synthetic import generate_classification
    from fnatune.search import OptimSpec
    from fnatune.seeds import seed_from_net
    from fnatune.tasks.cls import ClassifierNet
    from fnatune.train import Trainer, TrainObserver, TrainSettings

    pc = ctx.cfg.pretrain
    if cached.exists():
        seed = read_seed(cached)
        ctx.progress(f"  seed: pretrained seed read from cache {cached}", force=True)
        return seed, {"pretrain_cached": 1.0}
    # one folder per generated set, so pipelines asking for other sizes never collide
    sub = f"c{pc.num_classes}_t{pc.per_class_train}_v{pc.per_class_val}_s{pc.size}_seed{ctx.cfg.seed}"
    root = generate_classification(Path(pc.data_root) / sub, pc.num_classes, pc.per_class_train, pc.per_class_val,
                                   pc.size, seed=ctx.cfg.seed)
    tf = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train_set, val_set = ImageFolder(str(root / "train"), tf), ImageFolder(str(root / "val"), tf)
    torch.manual_seed(ctx.cfg.seed)  # before the seed's random init: the pretrained seed is a function of the config
    base = load_seed(ctx.cfg.seed_net.name, weights=None, **ctx.cfg.seed_net.options)
    net = ClassifierNet(base.arch, num_classes=pc.num_classes)
    net.backbone.load_state_dict(base.state_dict)
    dev = device(ctx)
    net.to(dev)

    def loss_fn(batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(net(x.to(dev)), y.to(dev))

    class Obs(TrainObserver):
        def on_step(self, info: dict[str, Any]) -> None:
            ctx.progress(f"  pretrain it {info['it']}/{info['iters']} loss {info['loss']:.3f} "
                         f"ETA {eta(info['it'], info['iters'], info['elapsed'])}")

        def on_log(self, it: int, metrics: dict[str, float]) -> None:
            st.log_metrics({f"pretrain_{k}": v for k, v in metrics.items()}, it)

    o = pc.optim
    settings = TrainSettings(iters=pc.iters, optim=OptimSpec(o.name, o.lr, o.momentum, o.weight_decay, o.betas, o.eps,
                                                             o.grad_clip),
                             policy="cosine", warmup_iters=min(50, pc.iters // 10), log_every=max(pc.iters // 10, 1),
                             checkpoint_every=max(pc.iters // 4, 1), seed=ctx.cfg.seed)
    stream = BatchStream(train_set, pc.batch_size, seed=ctx.cfg.seed)
    Trainer(net, loss_fn, stream, settings, st.dir / "pretrain", Obs()).run()
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val_set, batch_size=64):
            correct += int((net(x.to(dev)).argmax(1).cpu() == y).sum())
    acc = correct / len(val_set)
    seed = seed_from_net(ctx.cfg.seed_net.name, net.backbone.cpu(), source=f"pretrained by fnatune (val acc {acc:.3f})")
    seed.classifier = {k: v.detach().cpu().clone() for k, v in net.fc.state_dict().items()}
    save_seed(seed, cached)
    shutil.rmtree(st.dir / "pretrain", ignore_errors=True)
    ctx.progress(f"  seed: pretrained, val accuracy {acc:.3f}; cached at {cached}", force=True)
    return seed, {"pretrain_val_acc": acc}


def remap_or_init(ctx: RunContext, st: StageHandle, target: Any, init: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Seed -> ``target`` (a SearchSpace or an Arch) by remapping, or a seeded random init."""
    from fnatune.nets import ChildNet, SuperNet
    from fnatune.remap import RemapOptions, remap

    torch.manual_seed(ctx.cfg.seed)  # module init (and FNA's 1e-3 * N(0,1) alpha init) is part of the run's seed
    if init == "random":
        net = SuperNet(target) if not isinstance(target, Arch) else ChildNet(target)
        return net, {"init": "random"}
    rc = ctx.cfg.remap
    opts = RemapOptions(width=rc.width, kernel=rc.kernel, noise=rc.noise, noise_scale=rc.noise_scale,
                        noise_region=rc.noise_region, seed=ctx.cfg.seed)
    net, report = remap(seed_of(ctx), target, opts)
    report.save(st.dir / "remap_report.json")
    st.log_artifact(st.dir / "remap_report.json")
    return net, {"init": "remap", **{f"remap_{k}": v for k, v in report.counts().items()}}


def stage_supernet(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    from fnatune.space import get_space

    net, info = remap_or_init(ctx, st, get_space(ctx.cfg.space), ctx.cfg.search.init)
    out = atomic_torch_save(net.state_dict(), st.dir / "weights.pt")
    st.log_params({k: v for k, v in info.items() if not k.startswith("remap_")})
    return {"outputs": {"weights": rel(ctx, out)},
            "metrics": {k: float(v) for k, v in info.items() if k.startswith("remap_")}}


def stage_target(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    """Seed -> the derived arch, again from the seed (FNA_SPEC §1.6), or the ablations' alternatives."""
    arch = Arch.load(ctx.run_dir / "arch.json")
    init = ctx.cfg.finetune.init
    if init == "supernet":
        from fnatune.nets import SuperNet
        from fnatune.space import get_space

        sup = SuperNet(get_space(ctx.cfg.space))
        sup.load_state_dict(torch.load(ctx.path("search", "supernet"), map_location="cpu", weights_only=True))
        net, info = sup.extract_child(arch), {"init": "supernet"}
    else:
        net, info = remap_or_init(ctx, st, arch, init)
    out = atomic_torch_save(net.state_dict(), st.dir / "weights.pt")
    st.log_params({"init": info["init"], "arch": arch.block_string()})
    return {"outputs": {"weights": rel(ctx, out)},
            "metrics": {k: float(v) for k, v in info.items() if k.startswith("remap_")}}


def stage_export(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    """The derived backbone (fine-tuned weights) to ONNX, checked with onnxruntime; the arch card."""
    from fnatune.cost import count_params
    from fnatune.export import export_onnx
    from fnatune.nets import ChildNet
    from fnatune.stages.learn import backend
    from fnatune.viz import arch_picture

    arch = Arch.load(ctx.run_dir / "arch.json")
    backbone = ChildNet(arch)
    backbone.load_state_dict(torch.load(ctx.path("finetune", "backbone"), map_location="cpu", weights_only=True))
    outputs: dict[str, str] = {}
    metrics: dict[str, float] = {}
    pic = arch_picture(arch, st.dir / "arch.png", title=f"{ctx.cfg.name}: {arch.block_string()}")
    outputs["picture"] = rel(ctx, pic)
    if ctx.cfg.export.onnx:
        size = ctx.cfg.export.input or backend(ctx).export_size()
        info = export_onnx(backbone, st.dir / "backbone.onnx", size, arch.skeleton.in_channels, ctx.cfg.export.opset)
        outputs["onnx"] = rel(ctx, st.dir / "backbone.onnx")
        metrics["onnxruntime_max_abs_diff"] = info["onnxruntime_max_abs_diff"]
        st.log_artifact(st.dir / "backbone.onnx")
    metrics.update(backend(ctx).whole_cost(arch))
    metrics["backbone_params"] = float(count_params(backbone))
    for p in (ctx.run_dir / "arch.json", pic, ctx.path("finetune", "backbone")):
        st.log_artifact(p)
    st.tracker.log_artifact(ctx.parent_run, ctx.run_dir / "arch.json")
    st.tracker.log_artifact(ctx.parent_run, pic)
    return {"outputs": outputs, "metrics": metrics}
