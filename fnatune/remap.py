"""Parameter remapping (FNA_SPEC §4): seed -> super net, and seed -> child net, always from the seed.

The rules, at three levels:

- **depth**: layer ``l`` of stage ``b`` takes its parameters from seed layer ``min(l, L_seed(b) - 1)``;
  extra layers copy the stage's *last* seed layer. In a child net skip layers carry nothing and the
  i-th non-skip layer maps to seed layer ``min(i, L-1)`` (what FNA gets after sorting skips to the end).
  In a super net every candidate of layer ``l`` maps to seed layer ``min(l, L-1)``.
- **width**: the overlap of channels is copied. Inside a block, the block's family applies one channel
  index set consistently to every tensor that channel dimension runs through. Default: the first k
  channels; variants (Algorithm 1, FNA_SPEC §13.3): the k channels with the largest ``|gamma|`` of the BN
  that scales them (``bn_gamma``), or the largest std / L1 norm of their seed filters (``std`` / ``l1``).
  New channels (width expansion) are zero, or zero + noise with ``noise=True``; new BN entries keep
  their init (gamma 1, beta 0, mean 0, var 1).
- **kernel**: the seed kernel is placed at the centre of a larger kernel, zeros around (variant
  ``dilation``: on a dilated lattice, 3x3 -> 5x5 at {0,2,4}, 7x7 at {0,3,6}); a smaller kernel is the
  centre crop.

The depth rule and the walk over two networks (stem, stages, layers, tail) are here; what goes where
inside one block is its family's remap rule (:mod:`fnatune.blocks`), written with the generic tensor
rules of :class:`~fnatune.tensor_rules.TensorWriter`. So no parameter name is ever parsed. Every tensor of the target gets a
:class:`TensorRecord` in the :class:`RemapReport`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from fnatune.arch import Arch
from fnatune.blocks import SKIP, Block, Skip, family_of, parse_op
from fnatune.errors import RemapError
from fnatune.io import atomic_write_json
from fnatune.seeds import Seed
from fnatune.space import SearchSpace
from fnatune.tensor_rules import (
    ACTIONS,
    RemapOptions,
    TensorRecord,
    TensorWriter,
    kernel_positions,
    remap_conv_weight,
    remap_grouped_weight,
    remap_vector,
    top_channels,
)


@dataclass
class RemapReport:
    """Per-tensor log of a remap, saved as JSON next to the weights."""

    seed: str
    target: str
    options: RemapOptions
    records: list[TensorRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(r.action for r in self.records)
        return {a: c[a] for a in ACTIONS if c[a]}

    def record(self, target: str) -> TensorRecord:
        for r in self.records:
            if r.target == target:
                return r
        raise KeyError(target)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {a}" for a, n in self.counts().items())
        return f"remapped {self.seed} -> {self.target}: {len(self.records)} tensors ({counts})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "target": self.target,
            "options": self.options.model_dump(mode="json"),
            "counts": self.counts(),
            "tensors": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(r).items()} for r in self.records
            ],
        }

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def write_block(writer: TensorWriter, src: Block, dst: Block, where: str) -> None:
    """A seed block into a target block of the same family, by that family's rule."""
    fam, theirs = family_of(src), family_of(dst)
    if fam is None or theirs is None or fam is not theirs:
        raise RemapError(f"{where}: the seed's block is {_kind(src)} but the target's is {_kind(dst)}; a block "
                         "is remapped only into a block of its own family")
    fam.remap(writer, src, dst)


def _kind(m: nn.Module) -> str:
    fam = family_of(m)
    return f"'{m.name}' ({fam.name if fam else 'skip'})"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ the walk
def _families(ops: list[str]) -> set[str]:
    return {f.name for f in map(family_of, ops) if f is not None}


def fit_problem(seed: Seed, target: Arch | SearchSpace) -> str | None:
    """Why ``seed`` cannot be remapped into ``target`` (a space or an arch), or None when it can: both need
    the same stage count, and each stage's blocks must be of the seed stage's block family."""
    name = f"space '{target.name}'" if isinstance(target, SearchSpace) else "the target"
    seed_ops = seed.arch.ops
    if isinstance(target, SearchSpace):
        all_theirs = _families([o for s, st in enumerate(target.stages) for l in range(st.layers)
                                for o in target.candidates(s, l)])
    else:
        all_theirs = _families([o for ops in target.ops for o in ops])
    all_mine = _families([o for ops in seed_ops for o in ops])
    if all_theirs and not all_theirs & all_mine:
        return (f"seed '{seed.name}' ({', '.join(sorted(all_mine))} blocks) does not fit {name} "
                f"({', '.join(sorted(all_theirs))} blocks); choose a seed of that family or a space made of the "
                "seed's blocks")
    n_target = len(target.stages) if isinstance(target, SearchSpace) else len(target.ops)
    if len(seed_ops) != n_target:
        return (f"seed '{seed.name}' has {len(seed_ops)} stages after the stem but {name} has {n_target}; "
                "remapping works stage by stage, so both need the same stage count")
    for s, ops in enumerate(seed_ops):
        if isinstance(target, SearchSpace):
            theirs_ops = [o for l in range(target.stages[s].layers) for o in target.candidates(s, l)]
        else:
            theirs_ops = list(target.ops[s])
        theirs, mine = _families(theirs_ops), _families(list(ops))
        if theirs and not theirs <= mine:
            return (f"seed '{seed.name}' does not fit {name}: stage {s} of the seed has {', '.join(sorted(mine))} "
                    f"blocks, {name} has {', '.join(sorted(theirs))} blocks there; choose a seed of that "
                    "family or a space made of the seed's blocks")
        first = next(o for o in ops if o != SKIP)
        fam = family_of(first)
        for op in dict.fromkeys(o for o in theirs_ops if o != SKIP):
            why = fam.fits(parse_op(first), parse_op(op)) if fam is not None else None  # type: ignore[arg-type]
            if why:
                return f"seed '{seed.name}' does not fit {name}: stage {s}: {why}"
    return None


def _layer_pairs(seed_net: nn.Module, target: nn.Module) -> Iterator[tuple[Block, Block, str]]:
    """(seed block, target block, where) following the depth rule."""
    from fnatune.nets import ChildNet, MixedLayer

    for s, (seed_stage, stage) in enumerate(zip(seed_net.stages, target.stages)):
        seed_layers = [m for m in seed_stage if not isinstance(m, Skip)]
        if not seed_layers:
            raise RemapError(f"seed stage {s} has no layers with parameters")
        depth = 0
        for l, layer in enumerate(stage):
            if isinstance(layer, MixedLayer):
                src = seed_layers[min(l, len(seed_layers) - 1)]
                for name, op in zip(layer.names, layer.candidates):
                    if name != SKIP:
                        yield src, op, f"stage {s} layer {l} candidate '{name}'"
                continue
            if isinstance(layer, Skip):
                continue
            position = depth if isinstance(target, ChildNet) else l
            yield seed_layers[min(position, len(seed_layers) - 1)], layer, f"stage {s} layer {l}"
            depth += 1


def remap_into(seed: Seed, target: nn.Module, options: RemapOptions | None = None) -> RemapReport:
    """Overwrite ``target``'s weights (a ChildNet or SuperNet) with the seed's, remapped. In place."""
    from fnatune.nets import ChildNet, SuperNet

    options = options or RemapOptions()
    if not isinstance(target, (ChildNet, SuperNet)):
        raise RemapError(f"remap target must be a ChildNet or SuperNet, got {type(target).__name__}")
    problem = fit_problem(seed, target.space if isinstance(target, SuperNet) else target.arch)
    if problem:
        raise RemapError(problem)
    seed_net = seed.build()
    w = TensorWriter(target, options)
    w.name_sources(seed_net)
    w.overlap(seed_net.stem, target.stem)
    for src, dst, where in _layer_pairs(seed_net, target):
        write_block(w, src, dst, where)
    if target.tail is not None and seed_net.tail is not None:
        w.overlap(seed_net.tail, target.tail)
    records = []
    for name, t in target.state_dict(keep_vars=True).items():
        if name.startswith("alphas."):
            continue
        records.append(w.records.get(name) or TensorRecord(name, "left_at_init", tuple(t.shape)))
    return RemapReport(seed.name, _describe(target), options, records)


def remap_layer(src: Block, dst: Block, options: RemapOptions | None = None) -> list[TensorRecord]:
    """Remap one seed block into another block of its family in place (the width and kernel rules, no depth rule)."""
    w = TensorWriter(dst, options or RemapOptions())
    w.name_sources(src)
    write_block(w, src, dst, "block")
    return list(w.records.values())


def _describe(target: nn.Module) -> str:
    from fnatune.nets import ChildNet, SuperNet

    if isinstance(target, SuperNet):
        return f"SuperNet({target.space.name})"
    assert isinstance(target, ChildNet)
    return f"ChildNet({target.arch.space or 'custom'}: {target.arch.block_string()})"


def remap(
    seed: Seed, target: Arch | SearchSpace | nn.Module, options: RemapOptions | None = None, **net_kwargs: Any
) -> tuple[nn.Module, RemapReport]:
    """Remap ``seed`` into ``target`` and return ``(module, report)``.

    ``target`` is an :class:`Arch` (a :class:`~fnatune.nets.ChildNet` is built), a
    :class:`SearchSpace` (a :class:`~fnatune.nets.SuperNet` is built; ``net_kwargs`` go to it) or an
    already built ChildNet/SuperNet, which is overwritten in place.
    """
    from fnatune.nets import ChildNet, SuperNet

    if isinstance(target, (Arch, SearchSpace)):
        problem = fit_problem(seed, target)  # before building a network that cannot be filled
        if problem:
            raise RemapError(problem)
    if isinstance(target, Arch):
        module: nn.Module = ChildNet(target, **net_kwargs)
    elif isinstance(target, SearchSpace):
        module = SuperNet(target, **net_kwargs)
    else:
        module = target
    report = remap_into(seed, module, options)
    return module, report


__all__ = [
    "ACTIONS",
    "RemapOptions",
    "RemapReport",
    "TensorRecord",
    "TensorWriter",
    "fit_problem",
    "kernel_positions",
    "remap",
    "remap_conv_weight",
    "remap_grouped_weight",
    "remap_into",
    "remap_layer",
    "remap_vector",
    "top_channels",
]
