"""The end of a multi-trial run: one row per trial, a markdown table, and for sweeps the Pareto front of
task metric (higher is better) against whole-network cost (lower is better) as a table and a plot, all
written into the run directory and logged on the experiment's parent MLflow run."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fnatune.config import PipelineCfg
from fnatune.io import atomic_write_json, atomic_write_text
from fnatune.rundir import RunDir
from fnatune.tracking import view_columns


def _trial_row(run: RunDir) -> dict[str, Any]:
    ev, ex = run.done("evaluate").get("metrics", {}), run.done("export").get("metrics", {})
    arch = json.loads(run.arch_path.read_text()) if run.arch_path.exists() else None
    from fnatune.arch import Arch

    hours = sum(r.get("hours", 0.0) for r in run.stage_records().values())
    return {"metrics": ev, "params_M": (ex.get("params") or 0) / 1e6 or None,
            "madds_B": (ex.get("madds_paper_resolution") or 0) / 1e9 or None, "hours": hours,
            "seed_madds_B": (ex.get("seed_madds_paper_resolution") or 0) / 1e9 or None,
            "arch": Arch.from_dict(arch).block_string() if arch and ex else "", "complete": bool(ex)}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (metric, cost) that no other point beats: metric >= and cost <=, one strictly.
    Sorted by cost."""
    front = []
    for i, (m, c) in enumerate(points):
        dominated = any((m2 >= m and c2 <= c) and (m2 > m or c2 < c) for j, (m2, c2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))


def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _cell(v: Any) -> str:
    """A markdown table cell: block strings separate their stages with '|', which would end the cell."""
    return str(v).replace("|", "\\|").replace("\n", " ")


def variants_table(rows: list[dict[str, Any]], metric: str) -> str:
    """One row per variant; with a ``paper`` column (the paper's number and its table) when any variant has
    one, and below the table how many pairs of those variants ours order as the paper does."""
    papers = any(r.get("paper") for r in rows)
    pcol, psep = (" paper | paper's table |", "---|---|") if papers else ("", "")
    head = (f"| variant | overrides | {metric} |{pcol} params (M) | MAdds (B) | hours | status |\n"
            f"|---|---|---|{psep}---|---|---|---|\n")

    def paper(r: dict[str, Any]) -> str:
        if not papers:
            return ""
        p = r.get("paper")
        return f" {_f(p['value'], '.1f')} | {_cell(p['ref'])} |" if p else " - | - |"

    table = head + "".join(
        f"| {_cell(r['name'])} | {_cell(', '.join(f'{k}={v}' for k, v in r['set'].items()) or '(defaults)')} | "
        f"{_f(r['metrics'].get(metric))} |{paper(r)} {_f(r['params_M'], '.3f')} | {_f(r['madds_B'])} | "
        f"{r['hours']:.4f} | {_cell(r['status'])} |\n" for r in rows)
    if papers:
        agree, pairs = paper_agreement(rows, metric)
        table += (f"\nOrdered as in the paper: {agree} of {pairs} pairs of variants with a paper number "
                  "(pairs the paper ties are left out).\n")
    return table


def paper_agreement(rows: list[dict[str, Any]], metric: str) -> tuple[int, int]:
    """Of the pairs of finished variants that both have a paper number (and that the paper does not tie), how
    many our metric orders the same way (a tie of ours counts as disagreement)."""
    have = [(r["paper"]["value"], r["metrics"][metric]) for r in rows
            if r.get("paper") and r.get("complete") and r["metrics"].get(metric) is not None]
    agree = pairs = 0
    for i, (p1, m1) in enumerate(have):
        for p2, m2 in have[i + 1:]:
            if p1 == p2:
                continue
            pairs += 1
            agree += (p1 - p2) * (m1 - m2) > 0
    return agree, pairs


def sweep_table(rows: list[dict[str, Any]], metric: str, keys: list[str]) -> str:
    cols = [k.rsplit(".", 1)[-1] for k in keys]
    head = (f"| trial | {' | '.join(cols)} | {metric} | MAdds (B) | Pareto | status | arch |\n"
            f"|---|{'---|' * len(cols)}---|---|---|---|---|\n")
    return head + "".join(
        f"| {_cell(r['name'])} | {' | '.join(_cell(r['set'].get(k)) for k in keys)} | {_f(r['metrics'].get(metric))} | "
        f"{_f(r['madds_B'])} | {'*' if r.get('pareto') else ''} | {_cell(r['status'])} | {_cell(r['arch'])} |\n"
        for r in rows)


def knob_label(values: dict[str, Any]) -> str:
    """``lambda=0.03125, temperature=1.4``: a trial's varied knobs (last key part, 4 significant digits), as
    its MLflow run name and its point's label in the Pareto plot."""
    def short(v: Any) -> str:
        return format(v, ".4g") if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in values.items())


def pareto_plot(rows: list[dict[str, Any]], metric: str, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    done = [r for r in rows if r["madds_B"] is not None and r["metrics"].get(metric) is not None]
    ax.scatter([r["madds_B"] for r in done], [r["metrics"][metric] for r in done], c="#999999", label="trials")
    front = sorted((r for r in done if r.get("pareto")), key=lambda r: r["madds_B"])
    ax.plot([r["madds_B"] for r in front], [r["metrics"][metric] for r in front], "o-", c="#d62728", label="Pareto front")
    for r in done:
        ax.annotate(knob_label(r["set"]) or r["name"], (r["madds_B"], r["metrics"][metric]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    seed = next((r["seed_madds_B"] for r in rows if r.get("seed_madds_B")), None)
    if seed is not None:
        ax.axvline(seed, ls="--", c="#1f77b4", lw=1, label=f"the seed's own arch: {seed:.2f} B")
    ax.set_xlabel("whole-network MAdds (B) at the paper's resolution")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def summarise(cfg: PipelineCfg, run: RunDir, results: Sequence[Any], tracker: Any, parent: str) -> dict[str, Any]:
    """Rows for every trial (:class:`fnatune.tune.TrialResult`) of a variants or sweep run, the tables and
    (sweeps) the Pareto front."""
    metric = cfg.metric_name()
    rows: list[dict[str, Any]] = []
    if cfg.sweep is None:
        errors = {r.config.get("variant"): r.error for r in results}
        for v in cfg.variants:
            trial = run.variant(v.name)
            row = {"name": v.name, "set": v.set, **_trial_row(trial),
                   "paper": v.paper.model_dump() if v.paper is not None else None}
            why = trial.trial_error() or errors.get(v.name) or "incomplete"
            row["status"] = "done" if row["complete"] else f"failed: {why}"
            rows.append(row)
        table = variants_table(rows, metric)
        kind = "ablation"
    else:
        keys = list(cfg.sweep.params)
        for r in sorted(results, key=lambda r: r.trial_id):
            trial = run.trial(r.trial_id)
            error = trial.trial_error() or r.error
            row = {"name": r.trial_id, "set": {k: r.config.get(k) for k in keys}, **_trial_row(trial)}
            row["status"] = "done" if row["complete"] else (f"failed: {error}" if error else "stopped early")
            if not row["complete"]:
                _close_trial_run(tracker, trial, "FAILED" if error else "KILLED", row["status"])
            rows.append(row)
        ok = [i for i, r in enumerate(rows) if r["complete"] and r["metrics"].get(metric) is not None]
        for i in pareto_front([(rows[j]["metrics"][metric], rows[j]["madds_B"]) for j in ok]):
            rows[ok[i]]["pareto"] = True
        table = sweep_table(rows, metric, keys)
        kind = "sweep"
        front = [r for r in rows if r.get("pareto")]
        if front:
            front_table = sweep_table(sorted(front, key=lambda r: r["madds_B"]), metric, keys)
            atomic_write_text(run.pareto_path(".md"), front_table)
            plot = pareto_plot(rows, metric, run.pareto_path(".png"),
                               f"{cfg.name}: {metric} vs cost, {len(ok)} finished trials")
            for p in (run.pareto_path(".md"), plot):
                tracker.log_artifact(parent, p)
            tracker.log_metrics(parent, {"pareto_size": float(len(front)),
                                         f"best_{metric}": round(max(r["metrics"][metric] for r in front), 4)})
            tracker.show_columns(view_columns([f"best_{metric}", "pareto_size"]))
    atomic_write_text(run.summary_path(kind), table)
    atomic_write_json(run.summary_path(kind, ".json"), rows)
    tracker.log_artifact(parent, run.summary_path(kind))
    tracker.log_artifact(parent, run.summary_path(kind, ".json"))
    return {"rows": rows, "table": table, "metric": metric}


def _close_trial_run(tracker: Any, trial: RunDir, status: str, why: str) -> None:
    run_id = trial.state().get("parent_run")
    if run_id and tracker.run_exists(run_id):
        tracker.set_tags(run_id, {"fnatune.outcome": why[:250]})
        tracker.end_run(run_id, status)
