"""The search split of a training set (FNA_SPEC §5.5).

FNA shuffles the image list with Python's ``random.seed(520)`` and cuts it in two halves: part 1 is
built with the *train* (augmented) pipeline and feeds the **arch** steps, part 2 with the *val*
pipeline and feeds the **weight** steps. ``arch_data: augmented`` reproduces that (the released
archs came from it); ``arch_data: plain`` swaps the roles (weights on the augmented half).
"""
from __future__ import annotations

import random
from collections.abc import Sequence


def split_indices(n: int, fraction: float = 0.5, seed: int = 520) -> tuple[list[int], list[int]]:
    """Shuffle ``range(n)`` with ``random.Random(seed)`` and cut after ``round(n * fraction)``.

    Returns ``(part1, part2)``; both are non-empty when ``n >= 2``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    order: Sequence[int] = list(range(n))
    rng = random.Random(seed)
    order = list(order)
    rng.shuffle(order)
    cut = min(max(round(n * fraction), 1), n - 1) if n >= 2 else n
    return sorted(order[:cut]), sorted(order[cut:])
