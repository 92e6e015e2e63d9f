"""The task-independent learning stages: data, search, fixed arch, fine-tune, evaluate (FNA_SPEC §5,
§6). What differs per task (datasets, library model, metric) comes from a
:class:`~fnatune.stages.backend.TaskBackend`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from fnatune.arch import Arch
from fnatune.io import atomic_torch_save, atomic_write_json
from fnatune.pipeline import RunContext, StageHandle, eta
from fnatune.stages.backend import TaskBackend
from fnatune.stages.common import device, rel


def backend(ctx: RunContext) -> TaskBackend:
    """The run's task backend (one per context)."""
    if "backend" not in ctx.cache:
        if ctx.cfg.task == "det":
            from fnatune.stages.det import DetBackend

            ctx.cache["backend"] = DetBackend(ctx)
        else:
            from fnatune.stages.seg import SegBackend

            ctx.cache["backend"] = SegBackend(ctx)
    return ctx.cache["backend"]


def stage_data(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    """Generate the synthetic set if asked, then check the layout and the labels."""
    return {"outputs": {}, "metrics": backend(ctx).prepare()}


def _stream(ctx: RunContext, ds: Any, batch_size: int, seed: int, dp: Any) -> Any:
    """A batch stream; data-parallel: this worker's shard, with the global batch split over the workers."""
    from fnatune.data import BatchStream

    b = backend(ctx)
    if dp is not None:
        from fnatune.distributed import shard

        if batch_size % dp.world:
            from fnatune.errors import FnatuneError

            raise FnatuneError(f"batch size {batch_size} does not split over resources.workers={dp.world}; "
                               f"use a multiple of {dp.world}")
        ds, batch_size, seed = shard(ds, dp.rank, dp.world), batch_size // dp.world, seed + 7919 * dp.rank
    return BatchStream(ds, batch_size, b.collate, seed=seed, num_workers=ctx.cfg.data.num_workers)


def _search_streams(ctx: RunContext, dp: Any = None) -> tuple[Any, Any]:
    s = ctx.cfg.search
    arch_ds, weight_ds = backend(ctx).search_sets()
    return (_stream(ctx, arch_ds, s.batch_size, ctx.cfg.seed * 2 + 1, dp),
            _stream(ctx, weight_ds, s.batch_size, ctx.cfg.seed * 2 + 2, dp))


def _cost_table(ctx: RunContext, supernet: Any) -> Any:
    from fnatune.cost import madds_table
    from fnatune.latency import latency_table

    c = ctx.cfg.search.cost
    size = c.input or supernet.space.input_size
    if c.model == "latency":
        return latency_table(supernet, size, device=c.device, dtype=c.dtype, repeats=c.repeats)
    return madds_table(supernet, size)


def _space_arch(ctx: RunContext) -> Arch:
    """A point of the space, for the taps' channels (equal for every point: widths are not searched)."""
    from fnatune.space import get_space

    space = get_space(ctx.cfg.space)
    return space.arch_from_indices([0] * len(space.searchable_layers()))


def stage_search(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    return _maybe_data_parallel(ctx, st, "search")


def _search(ctx: RunContext, st: StageHandle, dp: Any = None) -> dict[str, Any]:
    from fnatune.nets import SuperNet
    from fnatune.search import LRSpec, OptimSpec, Searcher, SearchObserver, SearchSettings
    from fnatune.viz import alpha_heatmap

    s, b = ctx.cfg.search, backend(ctx)
    dev = device(ctx)
    torch.manual_seed(ctx.cfg.seed)  # the head's init: same config, same run, in any process
    model = b.model(dict(type="FNASuperBackbone", space=ctx.cfg.space), _space_arch(ctx), "search")
    supernet: SuperNet = model.backbone.net
    supernet.load_state_dict(torch.load(ctx.path("supernet", "weights"), map_location="cpu", weights_only=True))
    table = _cost_table(ctx, supernet)
    model.to(dev)
    arch_stream, weight_stream = _search_streams(ctx, dp)
    if dp is None or dp.is_main:
        atomic_write_json(st.dir / "cost_table.json", table.to_dict())
        st.log_artifact(st.dir / "cost_table.json")

    def opt(o: Any) -> OptimSpec:
        return OptimSpec(o.name, o.lr, o.momentum, o.weight_decay, tuple(o.betas), o.eps, o.grad_clip)

    lr = s.weight_lr
    steps = s.steps_per_epoch or s.repeat * len(arch_stream)
    settings = SearchSettings(
        epochs=s.epochs, warmup_epochs=s.warmup_epochs, steps_per_epoch=steps, arch_steps=s.arch_steps,
        weight_steps=s.weight_steps, temperature=s.temperature, sample_temperature=s.sample_temperature,
        cost_lambda=s.cost.lam, log_base=s.cost.log_base, cost_target=s.cost.target, weight_optim=opt(s.weight_optim),
        arch_optim=opt(s.arch_optim),
        weight_lr=LRSpec(lr.policy, list(lr.milestones), lr.gamma, lr.power, lr.warmup_iters, lr.warmup_ratio),
        checkpoint_every=s.checkpoint_every, seed=ctx.cfg.seed)
    st.log_params({"cost.model": s.cost.model, "cost.unit": table.unit, "steps_per_epoch": steps,
                   "cost.input": "x".join(map(str, table.input_size)),
                   **{f"table.{k}": v for k, v in table.summary().items()}})

    class Obs(SearchObserver):
        def on_step(self, i: dict[str, Any]) -> None:
            done = i["epoch"] * i["steps_per_epoch"] + i["step_in_epoch"]
            loss = i.get("weight_loss", i.get("arch_loss", 0.0))
            extra = f" E[cost] {i['expected_cost']:.3f} {table.unit}" if "expected_cost" in i else ""
            ctx.progress(f"  search epoch {i['epoch'] + 1}/{i['epochs']} [{i['kind']}] step "
                         f"{i['step_in_epoch']}/{i['steps_per_epoch']} loss {loss:.3f}{extra} "
                         f"ETA {eta(done, i['epochs'] * i['steps_per_epoch'], i['elapsed'])}")

        def on_epoch(self, epoch: int, metrics: dict[str, float], probabilities: list[list[float]], arch: Arch) -> None:
            st.log_metrics(metrics, epoch)
            path = st.dir / "alpha" / f"epoch_{epoch:03d}.json"
            atomic_write_json(path, {"epoch": epoch, "probabilities": probabilities, "arch": arch.block_string()})
            st.log_artifact(path, "alpha")
            st.tracker.set_tags(st.run_id, {"derived_arch": arch.block_string()})
            ctx.reporter.metrics("search", {"epoch": epoch + 1, **metrics})
            ctx.progress(f"  search epoch {epoch + 1}: derived {arch.block_string()} "
                         f"(E[cost] {metrics['expected_cost']:.3f} {table.unit}, alpha entropy "
                         f"{metrics['alpha_entropy']:.3f})", force=True)

        def on_checkpoint(self, path: Path, progress: dict[str, Any]) -> None:
            ctx.reporter.checkpoint("search", path, progress)

    result = Searcher(model, supernet, b.loss_fn(model), arch_stream, weight_stream, table, settings, st.dir / "work",
                      Obs(), dp=dp).run()
    assert result is not None
    if dp is not None and not dp.is_main:
        return {}
    sup_path = atomic_torch_save(supernet.state_dict(), st.dir / "supernet.pt")
    result.arch.save(st.dir / "arch.json")
    shutil.copyfile(st.dir / "arch.json", ctx.run_dir / "arch.json")
    atomic_write_json(st.dir / "alpha_history.json", result.history)
    heat = alpha_heatmap(result.probabilities, table.candidates, table.positions, st.dir / "alpha_heatmap.png",
                         title=f"{ctx.cfg.name}: softmax(alpha/T) after {s.epochs} epochs")
    for p in (st.dir / "arch.json", st.dir / "alpha_history.json", heat):
        st.log_artifact(p)
    (st.dir / "work" / "checkpoint.pt").unlink(missing_ok=True)  # the search is complete; its outputs stay
    final = result.history[-1]["metrics"]
    return {"outputs": {"arch": rel(ctx, st.dir / "arch.json"), "supernet": rel(ctx, sup_path),
                        "alpha_heatmap": rel(ctx, heat)},
            "metrics": {"final_expected_cost": final["expected_cost"], "final_alpha_entropy": final["alpha_entropy"],
                        "derived_cost": float(table.of_arch(result.arch))}}


def stage_fixed_arch(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    """No search: the configured arch file, or the seed's own layout projected into the space."""
    from fnatune.space import get_space
    from fnatune.stages.common import seed_of

    space = get_space(ctx.cfg.space)
    arch = space.project(seed_of(ctx).arch) if ctx.cfg.arch == "seed" else Arch.load(ctx.cfg.arch)
    space.validate(arch)
    arch.save(st.dir / "arch.json")
    shutil.copyfile(st.dir / "arch.json", ctx.run_dir / "arch.json")
    st.log_artifact(st.dir / "arch.json")
    return {"outputs": {"arch": rel(ctx, st.dir / "arch.json")}, "metrics": {}}


def target_model(ctx: RunContext, weights: Any) -> tuple[Any, Arch]:
    """The library model around the derived arch, its backbone loaded from ``weights`` if given."""
    arch = Arch.load(ctx.run_dir / "arch.json")
    bb = dict(type="FNABackbone", arch=arch.to_dict(), weights=str(weights) if weights else None)
    return backend(ctx).model(bb, arch, "finetune"), arch


def stage_finetune(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    return _maybe_data_parallel(ctx, st, "finetune")


def _finetune(ctx: RunContext, st: StageHandle, dp: Any = None) -> dict[str, Any]:
    from fnatune.search import OptimSpec
    from fnatune.train import Trainer, TrainObserver, TrainSettings

    f, b = ctx.cfg.finetune, backend(ctx)
    dev = device(ctx)
    torch.manual_seed(ctx.cfg.seed)  # the head's init: same config, same run, in any process
    model, _arch = target_model(ctx, ctx.path("target", "weights"))
    model.to(dev)
    ds, val = b.train_set(), b.val_set()
    o = f.optim
    settings = TrainSettings(iters=f.iters, optim=OptimSpec(o.name, o.lr, o.momentum, o.weight_decay, tuple(o.betas),
                                                            o.eps, o.grad_clip),
                             policy=f.policy, power=f.power, milestones=list(f.milestones), warmup_iters=f.warmup_iters,
                             warmup_ratio=f.warmup_ratio, log_every=f.log_every, eval_every=f.eval_every,
                             checkpoint_every=f.checkpoint_every, amp=f.amp, seed=ctx.cfg.seed)

    class Obs(TrainObserver):
        def on_step(self, i: dict[str, Any]) -> None:
            ctx.progress(f"  finetune it {i['it']}/{i['iters']} loss {i['loss']:.3f} lr {i['lr']:.2e} "
                         f"ETA {eta(i['it'], i['iters'], i['elapsed'])}")

        def on_log(self, it: int, metrics: dict[str, float]) -> None:
            st.log_metrics(metrics, it)
            ctx.reporter.metrics("finetune", {"it": it, **metrics})

        def on_checkpoint(self, path: Path, progress: dict[str, Any]) -> None:
            ctx.reporter.checkpoint("finetune", path, progress)

    stream = _stream(ctx, ds, f.batch_size, ctx.cfg.seed * 2 + 3, dp)
    evaluate = (lambda: b.evaluate(model, val)) if f.eval_every else None
    Trainer(model, b.loss_fn(model), stream, settings, st.dir / "work", Obs(), evaluate, dp=dp).run()
    if dp is not None and not dp.is_main:
        return {}
    model_path = atomic_torch_save(model.state_dict(), st.dir / "model.pt")
    bb_path = atomic_torch_save(model.backbone.net.state_dict(), st.dir / "backbone.pt")
    (st.dir / "work" / "checkpoint.pt").unlink(missing_ok=True)
    st.log_artifact(model_path)
    return {"outputs": {"model": rel(ctx, model_path), "backbone": rel(ctx, bb_path)}, "metrics": {}}


def stage_evaluate(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    b = backend(ctx)
    model, _ = target_model(ctx, None)
    model.load_state_dict(torch.load(ctx.path("finetune", "model"), map_location="cpu", weights_only=True))
    model.to(device(ctx))
    metrics = b.evaluate(model, b.val_set())
    atomic_write_json(st.dir / "metrics.json", metrics)
    st.log_artifact(st.dir / "metrics.json")
    st.tracker.log_metrics(ctx.parent_run, dict(metrics))
    ctx.progress(f"  evaluate: {json.dumps({k: round(v, 2) for k, v in metrics.items()})}", force=True)
    return {"outputs": {"metrics": rel(ctx, st.dir / "metrics.json")}, "metrics": metrics}


# ------------------------------------------------------------------------------------------ data parallel
_CORES = {"search": _search, "finetune": _finetune}


def _maybe_data_parallel(ctx: RunContext, st: StageHandle, stage: str) -> dict[str, Any]:
    """Run a learning stage here, or over ``resources.workers`` data-parallel workers (Ray Train). The
    workers resume from the stage's checkpoint like a single process; rank 0 writes the outputs."""
    r = ctx.cfg.resources
    if r.workers <= 1:
        return _CORES[stage](ctx, st)
    from fnatune import tune as fnatune_tune

    result_path = st.dir / "dp_result.json"
    result_path.unlink(missing_ok=True)
    payload = {"stage": stage, "cfg": ctx.cfg.model_dump(mode="json", by_alias=True), "run_dir": str(ctx.run_dir),
               "uri": ctx.tracker.uri, "enabled": ctx.cfg.tracking.enabled, "experiment": ctx.cfg.tracking.experiment,
               "parent": ctx.parent_run, "run_id": st.run_id}
    ctx.progress(f"  {stage}: data-parallel over {r.workers} workers", force=True)
    fnatune_tune.data_parallel(dp_stage_worker, payload, r, ctx.run_dir / "tune" / f"dp-{stage}")
    return json.loads(result_path.read_text())


def dp_stage_worker(payload: dict[str, Any]) -> None:
    """The body of one data-parallel worker (every rank): rebuild the run's context, run the stage's core."""
    from fnatune.config import validate
    from fnatune.distributed import current
    from fnatune.pipeline import Progress
    from fnatune.tracking import NullTracker, make_tracker

    dp = current()
    main = dp is None or dp.is_main
    cfg = validate(payload["cfg"], "data-parallel worker config")
    tracker = make_tracker(payload["uri"], payload["experiment"], payload["enabled"]) if main else NullTracker()
    run_dir = Path(payload["run_dir"])
    ctx = RunContext(cfg, run_dir, tracker, payload["parent"], Progress() if main else Progress(lambda _: None))
    st = StageHandle(payload["stage"], ctx.stage_dir(payload["stage"]), payload["run_id"], tracker)
    result = _CORES[payload["stage"]](ctx, st, dp)
    if main:
        atomic_write_json(st.dir / "dp_result.json", result)
