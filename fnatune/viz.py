"""Pictures people would rather look at than read: alpha per layer, and the derived architecture."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fnatune.arch import Arch


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def alpha_grid(probabilities: Sequence[Sequence[float]], candidates: Sequence[Sequence[str]]
               ) -> tuple[list[str], list[list[float]]]:
    """(ops, layers x ops grid of softmax(alpha) - 1/n), n the layer's own number of candidates, NaN where a
    layer lacks the op. Raw probabilities made the layers with fewer candidates the brightest rows; minus
    uniform, 0 is "no preference" in every row and the sign says for or against."""
    ops = sorted({o for c in candidates for o in c}, key=lambda o: (o == "skip", o))
    grid = [[float("nan")] * len(ops) for _ in probabilities]
    for r, (probs, cands) in enumerate(zip(probabilities, candidates)):
        for p, o in zip(probs, cands):
            grid[r][ops.index(o)] = float(p) - 1.0 / len(cands)
    return ops, grid


def alpha_heatmap(probabilities: Sequence[Sequence[float]], candidates: Sequence[Sequence[str]],
                  positions: Sequence[tuple[int, int]], path: str | Path, title: str = "softmax(alpha) per layer",
                  seed_ops: Sequence[str] | None = None) -> Path:
    """A layers x ops heatmap of each layer's preference (:func:`alpha_grid`) on a diverging scale centred on
    0, blank where a layer lacks that op; ``*`` marks the derived op (the argmax), a box the seed's op."""
    import matplotlib.patches as mpatches

    plt = _plt()
    ops, grid = alpha_grid(probabilities, candidates)
    span = max([abs(v) for row in grid for v in row if not math.isnan(v)] + [1e-3])
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(ops), 1.3 + 0.32 * len(grid)))
    im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-span, vmax=span)
    ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right")
    ax.set_yticks(range(len(grid)), [f"{s}.{l}" for s, l in positions])
    ax.set_xlabel("candidate op      * derived (argmax)" + ("      \u25a1 the seed's op" if seed_ops else ""))
    ax.set_ylabel("stage.layer")
    for r, row in enumerate(grid):
        best = max((v, i) for i, v in enumerate(row) if not math.isnan(v))[1]
        ax.text(best, r, "*", ha="center", va="center", color="black", fontweight="bold")
        if seed_ops is not None and seed_ops[r] in ops:
            ax.add_patch(mpatches.Rectangle((ops.index(seed_ops[r]) - 0.45, r - 0.45), 0.9, 0.9, fill=False,
                                            ec="black", lw=1.2))
    bar = fig.colorbar(im, ax=ax, fraction=0.05)
    bar.set_label("softmax(alpha) - 1/n   (n: the layer's candidates)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def arch_picture(arch: Arch, path: str | Path, title: str = "", reference: Arch | None = None,
                 reference_label: str = "seed") -> Path:
    """One box per layer as its block family draws it (MBConv: height ~ expansion, colour ~ kernel), skips
    hatched, stages separated and labelled with their width; with ``reference`` (the seed's own layout in
    the same space) a second row below, so the two read side by side layer by layer."""
    import matplotlib.patches as mpatches

    from fnatune.blocks import SKIP

    plt = _plt()
    n = sum(len(s) for s in arch.ops)
    rows = [("derived", arch)] + ([(reference_label, reference)] if reference is not None else [])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n + 2.6), 1.2 + 1.4 * len(rows)))
    families: list = []
    x_end = 0.0
    for i, (label, a) in enumerate(rows):
        y0 = 1.5 * (len(rows) - 1 - i)
        x_end = _draw_row(ax, a, y0, families, mpatches)
        if reference is not None:
            ax.text(-0.3, y0 + 0.5, label, ha="right", va="center", fontsize=8)
    ax.set_xlim(-1.2 if reference is not None else -0.2, x_end)
    ax.set_ylim(-0.25, 1.5 * (len(rows) - 1) + 1.35)
    ax.axis("off")
    handles = [mpatches.Patch(color=g.colour, label=g.label) for fam in families for g in fam.legend()]
    handles.append(mpatches.Patch(fill=False, hatch="//", label=SKIP))
    ax.legend(handles=handles, loc="upper right", ncol=4, fontsize=7, frameon=False)
    ax.set_title(title or arch.block_string(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _draw_row(ax: Any, arch: Arch, y0: float, families: list, mpatches: Any) -> float:
    from fnatune.blocks import family_of, parse_op

    x = 0.0
    for s, stage in enumerate(arch.ops):
        start = x
        for op in stage:
            fam = family_of(op)
            if fam is None:
                ax.add_patch(mpatches.Rectangle((x, y0 + 0.4), 0.35, 0.2, fill=False, hatch="//", ec="#999999"))
            else:
                g = fam.glyph(parse_op(op))  # type: ignore[arg-type]
                ax.add_patch(mpatches.Rectangle((x, y0 + 0.5 - g.height / 2), 0.35, g.height, color=g.colour))
                if fam not in families:
                    families.append(fam)
            x += 0.45
        ch = arch.skeleton.stages[s].out_channels
        ax.text((start + x - 0.1) / 2, y0 - 0.05, f"{ch}", ha="center", va="top", fontsize=7)
        x += 0.3
    return x
