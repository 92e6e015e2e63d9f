"""Block families: the kinds of candidate op a search space is made of, behind one seam.

A **family** (MBConv today) owns everything that depends on what its blocks look like:

* its op grammar: ``parse`` turns a name such as ``k5_e6`` into the family's :class:`OpSpec` (and
  ``None`` for a name of another grammar), ``spec.name`` writes it back;
* its module: ``build`` makes the :class:`Block` (an ``nn.Module`` whose ``forward_with_expansion`` also
  returns the block's inner activation, where it has one, for in-block taps such as SSDLite's);
* its remap rule: ``remap`` maps a seed block's tensors into a target block through the generic tensor
  rules of :mod:`fnatune.remap` (width, kernel, later groups);
* its cost hook: ``madds`` counts one block analytically at a given input size, which is what the
  search's MAdds table is made of;
* its picture: ``glyph`` is how :mod:`fnatune.viz` draws one block.

Spaces, archs, nets, remapping, costs, seeds and pictures ask the family of an op through this module and
never parse op names themselves. ``skip`` (identity) belongs to no family. Families register themselves
with :func:`register_family`; every public module of this package is one family, and other packages add
theirs under the ``fnatune.blocks`` entry-point group.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from fnatune.errors import ArchError
from fnatune.layers import BNOptions
from fnatune.registry import Registry, import_submodules, load_plugins

if TYPE_CHECKING:  # the writer (fnatune.tensor_rules, below this package) is handed in by fnatune.remap
    from fnatune.tensor_rules import TensorWriter

SKIP = "skip"


class OpSpec:
    """Base of every family's parsed op: a frozen dataclass with the op's numbers (kernel, expansion...)."""

    family: ClassVar[str]

    @property
    def name(self) -> str:
        """The op's name in its family's grammar (``parse(spec.name) == spec``)."""
        raise NotImplementedError  # abstract: each family's spec writes its own grammar


class Block(nn.Module):
    """A candidate op of some family. ``forward`` gives the output; ``forward_with_expansion`` gives
    ``(output, inner activation)`` so in-block taps can read the inner one."""

    spec: OpSpec

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_expansion(x)[0]

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # abstract: each family's block computes its own forward

    @property
    def name(self) -> str:
        return self.spec.name


class Skip(nn.Identity):
    """The ``skip`` op: identity, allowed only where input and output shapes already match."""

    name = SKIP

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


@dataclass(frozen=True)
class Glyph:
    """How one block is drawn in an arch picture: a box of ``height`` (0..1) in ``colour``."""

    height: float
    colour: str
    label: str


class BlockFamily(ABC):
    """One family of blocks; see the module docstring for what it owns."""

    #: registry name, e.g. "mbconv"
    name: str = ""
    #: the op grammar as a user reads it in an error, e.g. "k<kernel>_e<expansion> (such as k3_e6)"
    grammar: str = ""

    @abstractmethod
    def parse(self, op: str) -> OpSpec | None:
        """This family's spec for ``op``; None if ``op`` is not of this grammar; ArchError if it is but is malformed."""

    @abstractmethod
    def build(self, spec: OpSpec, c_in: int, c_out: int, stride: int, dilation: int, act: str, bn: BNOptions) -> Block:
        """The block of ``spec`` between ``c_in`` and ``c_out`` channels."""

    def inner_width(self, spec: OpSpec, c_in: int) -> int | None:
        """Channels of the block's inner activation (an ``S.L.expand`` tap reads it); None when it has none."""
        return None

    def check(self, spec: OpSpec, c_in: int, c_out: int) -> str | None:
        """Why ``spec`` cannot be built between ``c_in`` and ``c_out`` channels (e.g. groups that do not divide
        them), or None."""
        return None

    def fits(self, seed: OpSpec, target: OpSpec) -> str | None:
        """Why a seed block of ``seed`` cannot be remapped into a ``target`` block of this family, or None."""
        return None

    @abstractmethod
    def remap(self, writer: TensorWriter, src: Block, dst: Block) -> None:
        """Write the seed block ``src``'s tensors into ``dst`` (both of this family) with ``writer``'s rules."""

    @abstractmethod
    def madds(self, spec: OpSpec, c_in: int, c_out: int, stride: int, dilation: int, in_hw: tuple[int, int]) -> int:
        """MAdds of one block at input size ``in_hw``, counted as :func:`fnatune.cost.count_madds` counts."""

    @abstractmethod
    def glyph(self, spec: OpSpec) -> Glyph:
        """How :func:`fnatune.viz.arch_picture` draws this block."""

    def legend(self) -> list[Glyph]:
        """The glyphs an arch picture explains in its legend."""
        return []


_FAMILIES: Registry[BlockFamily] = Registry(
    "block family", loader=lambda: (import_submodules("fnatune.blocks"), load_plugins("fnatune.blocks", _FAMILIES)))


def register_family(family: BlockFamily) -> BlockFamily:
    """Register ``family`` under ``family.name``."""
    _FAMILIES.register(family.name, doc=type(family).__doc__)(lambda: family)
    _parse.cache_clear()
    return family


def list_families() -> list[str]:
    return _FAMILIES.names()


def get_family(name: str) -> BlockFamily:
    return _FAMILIES.create(name)


@lru_cache(maxsize=4096)
def _parse(name: str) -> OpSpec | None:
    if name == SKIP:
        return None
    if isinstance(name, str):
        for fam in list_families():
            spec = get_family(fam).parse(name)
            if spec is not None:
                return spec
    grammars = " or ".join(f"'{get_family(f).grammar}'" for f in list_families())
    raise ArchError(f"unknown op '{name}': expected 'skip' or {grammars}")


def parse_op(name: str) -> OpSpec | None:
    """The family spec of op ``name`` (``None`` for ``skip``); an unknown or malformed name is an ArchError."""
    return _parse(name)


def family_of(op: str | OpSpec | nn.Module) -> BlockFamily | None:
    """The family of an op name, a spec or a built block; None for ``skip``."""
    if isinstance(op, nn.Module):
        if isinstance(op, Skip):
            return None
        spec = getattr(op, "spec", None)
        if not isinstance(spec, OpSpec):
            raise ArchError(f"{type(op).__name__} is not a block of any family")
        return get_family(spec.family)
    spec = parse_op(op) if isinstance(op, str) else op
    return None if spec is None else get_family(spec.family)


def build_op(name: str, c_in: int, c_out: int, stride: int = 1, dilation: int = 1, act: str = "relu6",
             bn: BNOptions = BNOptions()) -> nn.Module:
    """Build a candidate op by name; ``skip`` requires matching shapes."""
    spec = parse_op(name)
    if spec is None:
        if c_in != c_out or stride != 1:
            raise ArchError(f"'skip' needs equal input/output shapes, got {c_in}->{c_out} channels, stride {stride}")
        return Skip()
    fam = get_family(spec.family)
    problem = fam.check(spec, c_in, c_out)
    if problem:
        raise ArchError(f"op '{name}' between {c_in} and {c_out} channels: {problem}")
    return fam.build(spec, c_in, c_out, stride, dilation, act, bn)


def op_problem(name: str, c_in: int, c_out: int) -> str | None:
    """Why op ``name`` cannot be built between ``c_in`` and ``c_out`` channels, or None (skip: shapes only)."""
    spec = parse_op(name)
    if spec is None:
        return None if c_in == c_out else f"'skip' needs equal input/output channels, got {c_in}->{c_out}"
    return get_family(spec.family).check(spec, c_in, c_out)


def inner_width(name: str, c_in: int) -> int | None:
    """Width of op ``name``'s inner activation on ``c_in`` input channels (None for skip and blockless ops)."""
    spec = parse_op(name)
    return None if spec is None else get_family(spec.family).inner_width(spec, c_in)


def op_madds(name: str, c_in: int, c_out: int, stride: int, dilation: int, in_hw: tuple[int, int]) -> int:
    """MAdds of op ``name`` at input ``in_hw`` (0 for skip), from its family's cost hook."""
    spec = parse_op(name)
    return 0 if spec is None else get_family(spec.family).madds(spec, c_in, c_out, stride, dilation, in_hw)


__all__ = ["SKIP", "Block", "BlockFamily", "Glyph", "OpSpec", "Skip", "build_op", "family_of", "get_family",
           "inner_width", "list_families", "op_madds", "op_problem", "parse_op", "register_family"]
