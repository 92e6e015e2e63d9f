"""Pictures people would rather look at than read: alpha per layer, and the derived architecture."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from fnatune.arch import Arch


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def alpha_heatmap(probabilities: Sequence[Sequence[float]], candidates: Sequence[Sequence[str]],
                  positions: Sequence[tuple[int, int]], path: str | Path, title: str = "softmax(alpha) per layer") -> Path:
    """A layers x ops heatmap of the op probabilities (blank where a layer lacks that op)."""
    plt = _plt()
    ops = sorted({o for c in candidates for o in c}, key=lambda o: (o == "skip", o))
    grid = [[float("nan")] * len(ops) for _ in probabilities]
    for r, (probs, cands) in enumerate(zip(probabilities, candidates)):
        for p, o in zip(probs, cands):
            grid[r][ops.index(o)] = p
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(ops), 1.0 + 0.32 * len(grid)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right")
    ax.set_yticks(range(len(grid)), [f"{s}.{l}" for s, l in positions])
    ax.set_xlabel("candidate op")
    ax.set_ylabel("stage.layer")
    for r, row in enumerate(grid):
        best = max((v, i) for i, v in enumerate(row) if not math.isnan(v))[1]
        ax.text(best, r, "*", ha="center", va="center", color="white")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def arch_picture(arch: Arch, path: str | Path, title: str = "") -> Path:
    """One box per layer as its block family draws it (MBConv: height ~ expansion, colour ~ kernel), skips
    hatched, stages separated and labelled with their width."""
    import matplotlib.patches as mpatches

    from fnatune.blocks import SKIP, family_of, parse_op

    plt = _plt()
    n = sum(len(s) for s in arch.ops)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n + 2), 2.6))
    families = []
    x = 0.0
    for s, stage in enumerate(arch.ops):
        start = x
        for op in stage:
            fam = family_of(op)
            if fam is None:
                ax.add_patch(mpatches.Rectangle((x, 0.4), 0.35, 0.2, fill=False, hatch="//", ec="#999999"))
            else:
                g = fam.glyph(parse_op(op))  # type: ignore[arg-type]
                ax.add_patch(mpatches.Rectangle((x, 0.5 - g.height / 2), 0.35, g.height, color=g.colour))
                if fam not in families:
                    families.append(fam)
            x += 0.45
        ch = arch.skeleton.stages[s].out_channels
        ax.text((start + x - 0.1) / 2, -0.05, f"{ch}", ha="center", va="top", fontsize=7)
        x += 0.3
    ax.set_xlim(-0.2, x)
    ax.set_ylim(-0.25, 1.25)
    ax.axis("off")
    handles = [mpatches.Patch(color=g.colour, label=g.label) for fam in families for g in fam.legend()]
    handles.append(mpatches.Patch(fill=False, hatch="//", label=SKIP))
    ax.legend(handles=handles, loc="upper right", ncol=4, fontsize=7, frameon=False)
    ax.set_title(title or arch.block_string(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
