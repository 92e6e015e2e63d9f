"""The pictures: alpha as each layer's preference over uniform, the derived arch beside the seed's."""
from __future__ import annotations

import math
from pathlib import Path

from fnatune.space import get_space
from fnatune.viz import alpha_grid, alpha_heatmap, arch_picture


def test_alpha_grid_is_probability_minus_the_layers_uniform() -> None:
    """A uniform layer reads 0 whatever its number of candidates (raw probabilities made the 2-candidate
    layer the brightest row); missing ops are NaN; skip is the last column."""
    cands = [("k3_e3", "k5_e3", "skip"), ("k3_e3", "k5_e3"), ("k3_e3", "k5_e3", "skip")]
    probs = [(1 / 3, 1 / 3, 1 / 3), (0.5, 0.5), (0.7, 0.2, 0.1)]
    ops, grid = alpha_grid(probs, cands)
    assert ops == ["k3_e3", "k5_e3", "skip"]
    assert all(abs(v) < 1e-12 for v in grid[0]) and all(abs(v) < 1e-12 for v in grid[1][:2])
    assert math.isnan(grid[1][2])
    assert [round(v, 12) for v in grid[2]] == [round(0.7 - 1 / 3, 12), round(0.2 - 1 / 3, 12), round(0.1 - 1 / 3, 12)]


def test_heatmap_and_arch_picture_render_with_the_seed(tmp_path: Path) -> None:
    space = get_space("mbv2_seg")
    arch, seed = space.sample(3), space.first_arch()
    positions = space.searchable_layers()
    cands = [space.candidates(s, l) for s, l in positions]
    probs = [[1.0 / len(c)] * len(c) for c in cands]
    probs[0] = [0.9] + [0.1 / (len(cands[0]) - 1)] * (len(cands[0]) - 1)
    heat = alpha_heatmap(probs, cands, positions, tmp_path / "heat.png", seed_ops=[seed.ops[s][l] for s, l in positions])
    pic = arch_picture(arch, tmp_path / "arch.png", reference=seed)
    alone = arch_picture(arch, tmp_path / "alone.png")
    assert heat.stat().st_size > 0 and pic.stat().st_size > 0
    from PIL import Image

    with Image.open(pic) as a, Image.open(alone) as b:
        assert a.size[1] > b.size[1]  # a second row for the seed
