"""Variants of one pipeline (the paper's ablations, FNA_SPEC §8), each a full run with its own
MLflow run under the pipeline's parent, and a summary table across them.

A variant is the pipeline with ``set`` overrides applied (``search.init: random``, ``remap.kernel:
dilation``, ...). Variants run in ``<run_dir>/variants/<name>/`` and resume like any run.
"""
from __future__ import annotations

import json
from typing import Any

from fnatune.io import atomic_write_json, atomic_write_text
from fnatune.pipeline import RunContext, prepare_run_dir, run_stages, variant_config

SUMMARY_KEYS = ("mIoU", "mAcc", "aAcc")


def run_variants(ctx: RunContext, tracking_uri: str) -> dict[str, Any]:
    from fnatune.stages import stages_for

    rows: list[dict[str, Any]] = []
    for i, v in enumerate(ctx.cfg.variants):
        cfg = variant_config(ctx.cfg, v.set, v.name)
        vdir = ctx.run_dir / "variants" / v.name
        vdir.mkdir(parents=True, exist_ok=True)
        state_path = vdir / "run.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        run_id = state.get("parent_run")
        if run_id is None or not ctx.tracker.run_exists(run_id):
            run_id = ctx.tracker.start_run(v.name, parent_id=ctx.parent_run, tags={"fnatune.variant": v.name})
            ctx.tracker.log_params(run_id, {"variant.set": json.dumps(v.set), "variant.description": v.description})
            state["parent_run"] = run_id
            atomic_write_json(state_path, state)
        ctx.progress(f"variant {i + 1}/{len(ctx.cfg.variants)}: {v.name} {v.set}", force=True)
        prepare_run_dir(cfg, vdir, f"variant {v.name}")
        vctx = RunContext(cfg, vdir, ctx.tracker, run_id, ctx.progress)
        summary = run_stages(vctx, stages_for(cfg))
        ctx.tracker.end_run(run_id)
        metrics = summary.get("evaluate", {}).get("metrics", {})
        export = summary.get("export", {}).get("metrics", {})
        hours = sum(rec.get("hours", 0.0) for rec in summary.values())
        from fnatune.arch import Arch

        arch = Arch.load(vdir / "arch.json").block_string() if (vdir / "arch.json").exists() else ""
        rows.append({"variant": v.name, "set": v.set, **{k: metrics.get(k) for k in SUMMARY_KEYS},
                     "params_M": (export.get("params") or 0) / 1e6,
                     "madds_B": (export.get("madds_paper_resolution") or 0) / 1e9, "hours": hours,
                     "arch": arch})
    table = summary_table(rows)
    out = ctx.run_dir / "ablation_summary.md"
    atomic_write_text(out, table)
    atomic_write_json(ctx.run_dir / "ablation_summary.json", rows)
    ctx.tracker.log_artifact(ctx.parent_run, out)
    ctx.tracker.log_artifact(ctx.parent_run, ctx.run_dir / "ablation_summary.json")
    ctx.progress("\n" + table, force=True)
    return {"variants": rows}


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = "| variant | overrides | mIoU | mAcc | params (M) | MAdds (B) | hours |\n|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['variant']} | {', '.join(f'{k}={v}' for k, v in r['set'].items()) or '(defaults)'} | "
        f"{_f(r.get('mIoU'))} | {_f(r.get('mAcc'))} | {r['params_M']:.3f} | {r['madds_B']:.2f} | {r['hours']:.4f} |\n"
        for r in rows)
    return head + body


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"

