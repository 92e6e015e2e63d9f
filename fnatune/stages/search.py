"""Stage ``search`` (FNA_SPEC §5): the FNA++ architecture search on the task's data, then the derived arch;
or, with the search off, stage ``arch``: a fixed arch file or the seed's own layout in the space."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from fnatune.arch import Arch
from fnatune.cost import CostTable
from fnatune.data import stream_for
from fnatune.framework import RunContext, StageHandle, eta
from fnatune.io import atomic_torch_save, atomic_write_json
from fnatune.space import get_space, load_arch
from fnatune.stages.data import SEARCH_PARTS

#: the share of alpha's gradient from the cost term above which an epoch says that the task no longer decides
COST_DOMINATES = 0.9


def cost_table(ctx: RunContext, supernet: Any) -> CostTable:
    """The cost model of the search: MAdds at the task resolution, or latency measured on a device."""
    from fnatune.cost import madds_table
    from fnatune.latency import latency_table

    c = ctx.cfg.search.cost
    size = c.input or supernet.space.input_size
    if c.model == "latency":
        return latency_table(supernet, size, device=c.device, dtype=c.dtype, repeats=c.repeats)
    return madds_table(supernet, size)


def stage_search(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    return ctx.parallel(st, search_core)


def search_core(ctx: RunContext, st: StageHandle, dp: Any = None) -> dict[str, Any]:
    """The search itself, on one process or on every rank of a data-parallel group (rank 0 writes)."""
    from fnatune.nets import SuperNet
    from fnatune.search import Searcher, SearchObserver
    from fnatune.viz import alpha_heatmap

    s, b, seed = ctx.cfg.search, ctx.backend, ctx.cfg.seed
    dev = ctx.device()
    torch.manual_seed(seed)  # the head's init: same config, same run, in any process
    model = b.model(dict(type="FNASuperBackbone", space=ctx.cfg.space), get_space(ctx.cfg.space).first_arch(), "search")
    supernet: SuperNet = model.backbone.net
    supernet.load_state_dict(torch.load(ctx.path("supernet", "weights"), map_location="cpu", weights_only=True))
    table = cost_table(ctx, supernet)
    model.to(dev)
    arch_ds, weight_ds = b.search_sets()
    workers = ctx.cfg.data.num_workers
    arch_stream = stream_for(arch_ds, s.batch_size, b.collate, seed * 2 + 1, workers, dp, "search.batch_size",
                             SEARCH_PARTS[0])
    weight_stream = stream_for(weight_ds, s.batch_size, b.collate, seed * 2 + 2, workers, dp, "search.batch_size",
                               SEARCH_PARTS[1])
    if dp is None or dp.is_main:
        atomic_write_json(st.dir / "cost_table.json", table.to_dict())
        st.log_artifact(st.dir / "cost_table.json")

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
            share = metrics.get("cost_grad_share", 0.0)
            if share > COST_DOMINATES:
                ctx.progress(f"  search epoch {epoch + 1}: the cost term moves alpha, not the task: its gradient is "
                             f"{share / max(1 - share, 1e-9):.0f}x the task's (search.cost.lambda {s.cost.lam:g}), so the "
                             "search heads for the cheapest ops; a smaller lambda (or search.cost.target) lets the task "
                             "decide", force=True)

        def on_checkpoint(self, path: Path, progress: dict[str, Any]) -> None:
            ctx.reporter.checkpoint("search", path, progress)

    searcher = Searcher(model, supernet, b.loss_fn(model), arch_stream, weight_stream, table, s, st.dir / "work",
                        Obs(), seed=seed, dp=dp)
    st.log_params({"cost.model": s.cost.model, "cost.unit": table.unit, "steps_per_epoch": searcher.steps_per_epoch,
                   "cost.input": "x".join(map(str, table.input_size)),
                   **{f"table.{k}": v for k, v in table.summary().items()}})
    result = searcher.run()
    assert result is not None
    if dp is not None and not dp.is_main:
        return {}
    sup_path = atomic_torch_save(supernet.state_dict(), st.dir / "supernet.pt")
    result.arch.save(st.dir / "arch.json")
    shutil.copyfile(st.dir / "arch.json", ctx.run.arch_path)
    atomic_write_json(st.dir / "alpha_history.json", result.history)
    from fnatune.stages.seed import seed_layout

    layout = seed_layout(ctx)
    heat = alpha_heatmap(result.probabilities, table.candidates, table.positions, st.dir / "alpha_heatmap.png",
                         title=f"{ctx.cfg.name}: softmax(alpha/T) after {s.epochs} epochs",
                         seed_ops=None if layout is None else [layout.ops[p][q] for p, q in table.positions])
    for p in (st.dir / "arch.json", st.dir / "alpha_history.json", heat):
        st.log_artifact(p)
    derivation = result.derivation
    if derivation is not None and derivation.scored:
        atomic_write_json(st.dir / "derive.json", derivation.to_dict())
        st.log_artifact(st.dir / "derive.json")
        best = derivation.scored[0]
        ctx.progress(f"  derived by scoring {len(derivation.scored)} likely paths on the arch split: "
                     f"{derivation.arch.block_string()} (rank {best['rank'] + 1} by probability, task loss "
                     f"{best['task_loss']:.4f}, cost {best['cost']:.3f} {table.unit})", force=True)
    searcher.ckpt.remove()  # the search is complete; its outputs stay
    final = result.history[-1]["metrics"]
    return {"outputs": {"arch": ctx.rel(st.dir / "arch.json"), "supernet": ctx.rel(sup_path),
                        "alpha_heatmap": ctx.rel(heat)},
            "metrics": {"final_expected_cost": final["expected_cost"], "final_alpha_entropy": final["alpha_entropy"],
                        "final_derived_cost": float(table.of_arch(result.arch))}}  # not on the per-epoch series


def stage_fixed_arch(ctx: RunContext, st: StageHandle) -> dict[str, Any]:
    """No search: the configured arch file, or the seed's own layout projected into the space."""
    from fnatune.stages.seed import seed_of

    space = get_space(ctx.cfg.space)
    arch = space.project(seed_of(ctx).arch) if ctx.cfg.arch == "seed" else load_arch(ctx.cfg.arch)
    space.validate(arch)
    arch.save(st.dir / "arch.json")
    shutil.copyfile(st.dir / "arch.json", ctx.run.arch_path)
    st.log_artifact(st.dir / "arch.json")
    return {"outputs": {"arch": ctx.rel(st.dir / "arch.json")}, "metrics": {}}
