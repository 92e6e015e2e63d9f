"""Costs: parameter counts, multiply-adds (MAdds), and the per-layer cost table of a super net.

MAdds are counted the way FNA's ``multadds_count.py`` counts them (FNA_SPEC §5.3, §9.3): only Conv2d
and Linear, ``k*k*C_in/groups*C_out*H_out*W_out`` (+ one per output element for a bias), per image at
batch 1; BN, activations and additions are free. FNA++'s pose head adds transposed convolutions, which FNA's
counter never met; they count as every input pixel spread over its ``k*k*C_out/groups`` outputs,
``k*k*C_in*C_out/groups*H_in*W_in`` (+ bias), the convention of mmcv's counter that mmpose's tables use.
Counting runs the model on the ``meta`` device, so a 1024x2048 input costs no compute and no memory, and the counts are exact.

The table holds, for each searchable layer of a space, the MAdds of every candidate at the task
resolution (skip = 0). It is built from the space's geometry with each block family's cost hook
(:meth:`fnatune.blocks.BlockFamily.madds`), so no network is built or run; the counter above checks it.
``E[cost] = sum_layers sum_o softmax(alpha/T)_o * table[layer][o]`` is differentiable in alpha and is what
the search penalises (in GMAdds).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fnatune.arch import Arch
from fnatune.blocks import op_madds
from fnatune.errors import ArchError
from fnatune.layers import conv_madds, same_out

if TYPE_CHECKING:
    from fnatune.space import SearchSpace

GIGA = 1e9


def count_params(module: nn.Module) -> int:
    """Number of parameters (architecture logits of a super net excluded)."""
    arch = {id(p) for p in getattr(module, "arch_parameters", list)()}
    return sum(p.numel() for p in module.parameters() if id(p) not in arch)


def _layer_madds(module: nn.Module, inp: Tensor, out: Tensor) -> int:
    batch = out.shape[0]
    if isinstance(module, nn.ConvTranspose2d):
        per_in = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        n = out.numel() // batch
        return inp.numel() // batch * per_in + (n if module.bias is not None else 0)
    if isinstance(module, nn.Conv2d):
        per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        n = out.numel() // batch
        return n * per_out + (n if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        n = out.numel() // batch
        return n * module.in_features + (n if module.bias is not None else 0)
    return 0


class MAddsCounter:
    """Context manager that sums MAdds per Conv2d/ConvTranspose2d/Linear module during forwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.per_module: dict[nn.Module, int] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> MAddsCounter:
        for m in self.model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                self._handles.append(m.register_forward_hook(self._hook))
        return self

    def _hook(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self.per_module[module] = self.per_module.get(module, 0) + _layer_madds(module, inputs[0], output)

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def total(self) -> int:
        return sum(self.per_module.values())


def meta_forward(model: nn.Module, input_size: Sequence[int], in_channels: int = 3, **kwargs: Any) -> Any:
    """Run ``model`` (in eval mode) on a meta tensor of shape (1, C, H, W) without touching its real weights."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict(keep_vars=True).items()}
    x = torch.empty(1, in_channels, int(input_size[0]), int(input_size[1]), device="meta")
    was_training = model.training
    model.eval()  # batch 1: BN after global pooling cannot normalise in training mode
    try:
        with torch.no_grad():
            return functional_call(model, meta, (x,), kwargs, tie_weights=True, strict=False)
    finally:
        model.train(was_training)


def count_madds(model: nn.Module, input_size: Sequence[int], in_channels: int = 3, **kwargs: Any) -> int:
    """MAdds of one forward pass at ``input_size`` (H, W), batch 1."""
    with MAddsCounter(model) as counter:
        meta_forward(model, input_size, in_channels, **kwargs)
    return counter.total


class CostTable(ABC):
    """What the search needs from a per-layer, per-candidate cost table (MAdds or latency).

    Subclasses hold ``positions`` and ``candidates`` and give their rows in table units through
    :meth:`rows`; the expectation and the lookup of an arch live here once.
    """

    positions: list[tuple[int, int]]
    candidates: list[tuple[str, ...]]
    input_size: tuple[int, int]
    unit: str = ""

    @abstractmethod
    def rows(self) -> list[Tensor]:
        """Per searchable layer, the candidates' costs in the table's unit."""

    @abstractmethod
    def of_indices(self, indices: Sequence[int]) -> float:
        """Searchable cost of the path with these candidate indices, summed in the table's own number type."""

    @abstractmethod
    def summary(self) -> dict[str, float]:
        """Min, max and uniform-alpha searchable cost, and the fixed part."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The table as JSON."""

    def expected(self, alphas: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
        """E[searchable cost] under softmax(alpha / T); differentiable w.r.t. ``alphas``.

        Summed in float64 (MAdds span 1e5..1e9) and returned in the alphas' dtype.
        """
        rows = self.rows()
        if len(alphas) != len(rows):
            raise ArchError(f"the table has {len(rows)} layers but {len(alphas)} alpha vectors were given")
        total: Tensor | None = None
        for a, row in zip(alphas, rows):
            p = torch.softmax(a.to(torch.float64) / temperature, dim=-1)
            term = (p * row.to(p.device)).sum()
            total = term if total is None else total + term
        assert total is not None
        return total.to(alphas[0].dtype)

    def indices_of(self, arch: Arch) -> list[int]:
        idx = []
        for (s, l), cands in zip(self.positions, self.candidates):
            op = arch.ops[s][l]
            if op not in cands:
                raise ArchError(f"arch op '{op}' at stage {s} layer {l} is not a candidate of this table")
            idx.append(cands.index(op))
        return idx

    def of_arch(self, arch: Arch) -> float:
        """Searchable cost of ``arch`` (which must be a point of the table's space)."""
        return self.of_indices(self.indices_of(arch))


@dataclass
class MAddsTable(CostTable):
    """Per searchable layer, per candidate MAdds of a super net at one input size (unit: GMAdds)."""

    input_size: tuple[int, int]
    positions: list[tuple[int, int]]
    candidates: list[tuple[str, ...]]
    madds: list[list[int]]
    fixed_madds: int = 0  # stem, fixed layers and tail: the same for every arch
    meta: dict[str, Any] = field(default_factory=dict)
    unit = "GMAdds"

    def rows(self) -> list[Tensor]:
        return [torch.tensor(row, dtype=torch.float64) / GIGA for row in self.madds]

    def of_indices(self, indices: Sequence[int]) -> float:
        """Searchable GMAdds of the path with these candidate indices (summed as exact integers)."""
        return sum(row[i] for row, i in zip(self.madds, indices)) / GIGA

    def summary(self) -> dict[str, float]:
        """Min, max and uniform-alpha expected searchable GMAdds (FNA_SPEC §5.3 sanity values)."""
        rows = self.madds
        return {
            "min": sum(min(r) for r in rows) / GIGA,
            "max": sum(max(r) for r in rows) / GIGA,
            "uniform": sum(sum(r) / len(r) for r in rows) / GIGA,
            "fixed": self.fixed_madds / GIGA,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "madds",
            "unit": "MAdds",
            "input_size": list(self.input_size),
            "layers": [
                {"stage": s, "layer": l, "candidates": dict(zip(c, m))}
                for (s, l), c, m in zip(self.positions, self.candidates, self.madds)
            ],
            "fixed_madds": self.fixed_madds,
            "summary_gmadds": self.summary(),
            **({"meta": self.meta} if self.meta else {}),
        }


def madds_table(target: SearchSpace | nn.Module, input_size: Sequence[int] | None = None) -> MAddsTable:
    """The MAdds table of a :class:`~fnatune.space.SearchSpace` (or of a :class:`~fnatune.nets.SuperNet`'s
    space) at ``input_size`` (default: the space's task resolution), from the space's geometry and each
    candidate's family cost hook; ``fixed_madds`` counts the stem, the fixed layers and the tail."""
    from fnatune.nets import SuperNet
    from fnatune.space import SearchSpace

    if isinstance(target, SuperNet):
        space = target.space
    elif isinstance(target, SearchSpace):
        space = target
    else:
        raise TypeError(f"madds_table needs a SearchSpace or a SuperNet, got {type(target).__name__}")
    size = tuple(input_size or space.input_size)
    sk = space.skeleton
    hw = (same_out(int(size[0]), sk.stem_stride), same_out(int(size[1]), sk.stem_stride))
    fixed = conv_madds(sk.in_channels, sk.stem_channels, sk.stem_kernel, hw)
    hw = (same_out(hw[0], sk.stem_pool), same_out(hw[1], sk.stem_pool))  # the max-pool counts nothing
    searchable = set(space.searchable_layers())
    table: list[list[int]] = []
    for s, st in enumerate(space.stages):
        for l in range(st.layers):
            c_in, c_out, stride = sk.layer_io(s, l)
            row = [op_madds(op, c_in, c_out, stride, st.dilation, hw) for op in space.candidates(s, l)]
            if (s, l) in searchable:
                table.append(row)
            else:
                fixed += row[0]
            hw = (same_out(hw[0], stride), same_out(hw[1], stride))
    if sk.tail_channels is not None:
        fixed += conv_madds(sk.stages[-1].out_channels, sk.tail_channels, 1, hw)
    positions = space.searchable_layers()
    return MAddsTable(
        input_size=(int(size[0]), int(size[1])),
        positions=list(positions),
        candidates=[space.candidates(s, l) for s, l in positions],
        madds=table,
        fixed_madds=fixed,
        meta={"space": space.name},
    )
