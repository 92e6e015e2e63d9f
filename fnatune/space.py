"""Declarative search spaces.

A space is a :class:`~fnatune.arch.Skeleton` plus, for every layer, the list of candidate ops. It is
declared from :class:`StageSpec` entries in ``search_spaces/<family>.py`` and registered by name::

    @register_space("mbv2_det")
    def mbv2_det() -> SearchSpace:
        return SearchSpace(name="mbv2_det", stages=[StageSpec(24, stride=2, layers=4, ops=MBV2_OPS), ...])

Registered spaces are looked up with :func:`get_space` / :func:`list_spaces`; the bundled families are the public
modules of ``search_spaces/`` (imported the first time a space is looked up), other packages add theirs under the
``fnatune.spaces`` entry-point group. :func:`load_arch` reads an arch file in either form (a short form names a
registered space and gives only its ops) and checks it against the space it names.

FNA's rules are built in: the first layer of a stage never offers ``skip`` (it changes stride or
width, so every stage keeps at least one layer); other layers offer ``skip`` unless ``allow_skip`` is
off; widths, strides and dilations are fixed. A layer with a single candidate is fixed (not searched).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnatune.arch import ARCH_KEYS, Arch, Skeleton, StageShape, Tap, read_arch_json
from fnatune.blocks import SKIP, inner_width, op_problem, parse_op
from fnatune.errors import ArchError
from fnatune.registry import Registry, import_submodules, load_plugins


@dataclass(frozen=True)
class StageSpec:
    """One stage of a space.

    ``ops`` are the candidates of every layer; ``first_ops`` (default: ``ops``) those of the first
    layer, e.g. SSDLite's e6-only head layer. ``skip`` is added to non-first layers when
    ``allow_skip`` is true and must not be listed in ``ops``.
    """

    out_channels: int
    stride: int = 1
    layers: int = 1
    ops: tuple[str, ...] = ()
    first_ops: tuple[str, ...] | None = None
    dilation: int = 1
    allow_skip: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if self.first_ops is not None:
            object.__setattr__(self, "first_ops", tuple(self.first_ops))
        if self.layers < 1:
            raise ArchError(f"a stage needs at least one layer, got layers={self.layers}")
        if not self.ops:
            raise ArchError("a stage needs at least one candidate op")
        for op in self.ops + (self.first_ops or ()):
            if op == SKIP:
                raise ArchError("do not list 'skip' in a stage's ops; it is added by 'allow_skip'")
            parse_op(op)

    def candidates(self, layer: int) -> tuple[str, ...]:
        if layer == 0:
            return self.first_ops or self.ops
        return self.ops + ((SKIP,) if self.allow_skip else ())


def with_output_stride(
    stages: Sequence[StageSpec], output_stride: int, stem_stride: int = 2
) -> list[StageSpec]:
    """Apply the DeepLab output-stride policy (FNA_SPEC §3.4).

    Once the running stride reaches ``output_stride``, every later stride-2 stage runs at stride 1 and
    doubles the dilation; stages after it keep the raised dilation.
    """
    out: list[StageSpec] = []
    current, dilation = stem_stride, 1
    for st in stages:
        stride = st.stride
        if current >= output_stride and stride > 1:
            dilation *= stride
            stride = 1
        current *= stride
        out.append(StageSpec(st.out_channels, stride, st.layers, st.ops, st.first_ops, dilation, st.allow_skip))
    return out


@dataclass(frozen=True)
class SearchSpace:
    """A skeleton plus candidate ops per layer. Build archs with :meth:`arch`, check them with :meth:`validate`."""

    name: str
    stages: tuple[StageSpec, ...]
    stem_channels: int = 32
    stem_stride: int = 2
    tail_channels: int | None = None
    stem_kernel: int = 3
    stem_pool: int = 1
    act: str = "relu6"
    bn_eps: float = 1e-5
    taps: tuple[str, ...] = ()
    input_size: tuple[int, int] = (224, 224)
    description: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "taps", tuple(str(t) for t in self.taps))
        skel = self.skeleton  # validates taps, activation, stage count
        for s, st in enumerate(self.stages):
            for l in range(st.layers):
                c_in, c_out, _ = skel.layer_io(s, l)
                for op in st.candidates(l):
                    problem = op_problem(op, c_in, c_out) if op != SKIP else None
                    if problem:
                        raise ArchError(f"space '{self.name}': stage {s} layer {l} ({c_in} -> {c_out} channels), "
                                        f"op '{op}': {problem}")
        for tap in self.taps:
            t = Tap.parse(tap)
            if t.is_expand:
                st = self.stages[t.stage]
                if t.layer >= st.layers:
                    raise ArchError(f"space '{self.name}': tap '{tap}' names layer {t.layer} of a "
                                    f"{st.layers}-layer stage")
                c_in = skel.layer_io(t.stage, t.layer)[0]
                cands = st.candidates(t.layer)
                widths = {inner_width(op, c_in) for op in cands}
                if len(widths) != 1 or None in widths:
                    raise ArchError(
                        f"space '{self.name}': tap '{tap}' needs every candidate of stage {t.stage} layer "
                        f"{t.layer} to have the same expansion width, but its candidates are {list(cands)}"
                    )

    # ----------------------------------------------------------------------------------- structure
    @property
    def skeleton(self) -> Skeleton:
        return Skeleton(
            stages=tuple(StageShape(s.out_channels, s.stride, s.dilation) for s in self.stages),
            stem_channels=self.stem_channels,
            stem_stride=self.stem_stride,
            stem_kernel=self.stem_kernel,
            stem_pool=self.stem_pool,
            tail_channels=self.tail_channels,
            act=self.act,
            bn_eps=self.bn_eps,
            taps=self.taps,
        )

    @property
    def num_layers(self) -> tuple[int, ...]:
        return tuple(s.layers for s in self.stages)

    def candidates(self, stage: int, layer: int) -> tuple[str, ...]:
        return self.stages[stage].candidates(layer)

    def searchable_layers(self) -> list[tuple[int, int]]:
        """Positions ``(stage, layer)`` with more than one candidate, in network order."""
        return [(s, l) for s, st in enumerate(self.stages) for l in range(st.layers)
                if len(st.candidates(l)) > 1]

    def size(self) -> int:
        """Number of distinct architectures (product of candidate counts)."""
        return math.prod(len(self.candidates(s, l)) for s, l in self.searchable_layers())

    # ----------------------------------------------------------------------------------- archs
    def arch(self, ops: Sequence[Sequence[str]], meta: Mapping[str, Any] | None = None) -> Arch:
        """Make an :class:`Arch` of this space from ops per stage, validating it."""
        if len(ops) != len(self.stages):
            raise ArchError(f"arch does not fit space '{self.name}': it has {len(ops)} stages, "
                            f"the space has {len(self.stages)}")
        try:
            arch = Arch(self.skeleton, tuple(tuple(s) for s in ops), self.name, dict(meta or {}))
        except ArchError as e:
            raise ArchError(f"arch does not fit space '{self.name}': {e}") from None
        self.validate(arch)
        return arch

    def validate(self, arch: Arch) -> None:
        """Raise :class:`ArchError` naming the first stage/layer that does not fit this space."""
        where = f"arch does not fit space '{self.name}'"
        if len(arch.ops) != len(self.stages):
            raise ArchError(f"{where}: it has {len(arch.ops)} stages, the space has {len(self.stages)}")
        for s, (st, stage_ops) in enumerate(zip(self.stages, arch.ops)):
            if len(stage_ops) != st.layers:
                raise ArchError(f"{where}: stage {s} has {len(stage_ops)} layers, the space has {st.layers} "
                                f"(pad with 'skip' to keep a stage shallower)")
            for l, op in enumerate(stage_ops):
                cands = st.candidates(l)
                if op not in cands:
                    why = " (the first layer of a stage cannot be skipped)" if op == SKIP and l == 0 else ""
                    raise ArchError(f"{where}: stage {s} layer {l} is '{op}'{why}; allowed: {', '.join(cands)}")
        mine, theirs = self.skeleton, arch.skeleton
        for field_name in ("stages", "stem_channels", "stem_stride", "stem_kernel", "stem_pool", "tail_channels",
                           "in_channels"):
            if getattr(mine, field_name) != getattr(theirs, field_name):
                raise ArchError(f"{where}: its skeleton's {field_name} is {getattr(theirs, field_name)}, "
                                f"the space's is {getattr(mine, field_name)}")

    def indices_of(self, arch: Arch) -> list[int]:
        """Candidate index of ``arch``'s op at every searchable layer."""
        self.validate(arch)
        return [self.candidates(s, l).index(arch.ops[s][l]) for s, l in self.searchable_layers()]

    def arch_from_indices(self, indices: Sequence[int]) -> Arch:
        positions = self.searchable_layers()
        if len(indices) != len(positions):
            raise ArchError(f"space '{self.name}' has {len(positions)} searchable layers, got {len(indices)} indices")
        ops = [[st.candidates(l)[0] for l in range(st.layers)] for st in self.stages]
        for (s, l), i in zip(positions, indices):
            cands = self.candidates(s, l)
            if not 0 <= int(i) < len(cands):
                raise ArchError(f"index {i} out of range for stage {s} layer {l} ({len(cands)} candidates)")
            ops[s][l] = cands[int(i)]
        return self.arch(ops)

    def first_arch(self) -> Arch:
        """Every layer's first candidate: a point of the space (its taps have the space's widths, which no
        choice of ops changes)."""
        return self.arch([[st.candidates(l)[0] for l in range(st.layers)] for st in self.stages])

    def sample(self, rng: random.Random | int | None = None) -> Arch:
        """A uniformly random architecture (each layer's candidate drawn uniformly)."""
        r = rng if isinstance(rng, random.Random) else random.Random(rng)
        return self.arch_from_indices([r.randrange(len(self.candidates(s, l))) for s, l in self.searchable_layers()])

    def project(self, arch: Arch) -> Arch:
        """Express a seed's layout in this space: same ops per stage, padded with ``skip``.

        This is how "MobileNetV2 as a point of the FNA space" is built (``mbv2_seg.json``). Widths come
        from the space; the stage count must match and no stage may be deeper than the space's.
        """
        if len(arch.ops) != len(self.stages):
            raise ArchError(f"cannot express a {len(arch.ops)}-stage arch in space '{self.name}', "
                            f"which has {len(self.stages)} stages")
        ops = []
        for s, (st, stage_ops) in enumerate(zip(self.stages, arch.ops)):
            real = [o for o in stage_ops if o != SKIP]
            if len(real) > st.layers:
                raise ArchError(f"stage {s} has {len(real)} layers but space '{self.name}' allows at most {st.layers}")
            ops.append(real + [SKIP] * (st.layers - len(real)))
        return self.arch(ops, meta={"projected_from": arch.space or "seed"})

    def describe(self) -> str:
        """A human table of the space."""
        lines = [f"{self.name}: {self.description}".rstrip(": "),
                 f"  stem {self.stem_channels} ch, {self.stem_kernel}x{self.stem_kernel} stride {self.stem_stride}"
                 + (f" + max-pool stride {self.stem_pool}" if self.stem_pool > 1 else "") + f"; act {self.act}; "
                 f"tail {self.tail_channels or 'none'}; taps {', '.join(self.taps) or 'none'}; "
                 f"cost resolution {self.input_size[0]}x{self.input_size[1]}"]
        c_in = self.stem_channels
        for s, st in enumerate(self.stages):
            first, rest = st.candidates(0), st.candidates(1) if st.layers > 1 else ()
            kind = "fixed" if st.layers == 1 and len(first) == 1 else "searched"
            lines.append(f"  stage {s}: {c_in:>4} -> {st.out_channels:<4} stride {st.stride} dilation {st.dilation} "
                         f"layers {st.layers} ({kind}); first: {' '.join(first)}"
                         + (f"; others: {' '.join(rest)}" if rest else ""))
            c_in = st.out_channels
        lines.append(f"  {len(self.searchable_layers())} searchable layers, {self.size():.3g} architectures")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the catalog
_SPACES: Registry[SearchSpace] = Registry(
    "search space", loader=lambda: (import_submodules("search_spaces"), load_plugins("fnatune.spaces", _SPACES)))


def register_space(name: str) -> Callable[[Callable[[], SearchSpace]], Callable[[], SearchSpace]]:
    """Decorator registering a zero-argument factory that returns a :class:`SearchSpace`."""
    return _SPACES.register(name)


def list_spaces() -> list[str]:
    return _SPACES.names()


def get_space(name: str) -> SearchSpace:
    """The registered space ``name`` (``mbv2_det``, ``mbv2_seg``, ...)."""
    space = _SPACES.create(name)
    if space.name != name:
        raise ArchError(f"space factory '{name}' returned a space named '{space.name}'")
    return space


# ------------------------------------------------------------------------------------------ arch files
def load_arch(source: str | Path | Mapping[str, Any] | Arch) -> Arch:
    """An arch from a file, a parsed JSON object or an Arch, in the full or the short form, checked against the
    registered space it names (a full-form arch of an unregistered space is taken as it is)."""
    if isinstance(source, Arch):
        return source
    name = "arch" if isinstance(source, Mapping) else str(source)
    d = source if isinstance(source, Mapping) else read_arch_json(source)
    if not isinstance(d, Mapping):
        raise ArchError(f"{name}: expected a JSON object, got {type(d).__name__}")
    space_name = d.get("space")
    known = isinstance(space_name, str) and space_name in list_spaces()
    try:
        unknown = sorted(set(d) - ARCH_KEYS)
        if unknown:
            raise ArchError(f"unknown key(s) {unknown}; expected some of {sorted(ARCH_KEYS)}")
        if "stages" in d and all(isinstance(s, Mapping) for s in d["stages"]):
            try:
                arch = Arch.from_dict(d, source=name)
            except ArchError as e:
                raise ArchError(f"{e}{_stage_count_hint(space_name, len(d['stages'])) if known else ''}") from None
            if known:
                get_space(space_name).validate(arch)
            return arch
        if space_name is None:
            raise ArchError("a short-form arch (only 'ops' or 'blocks') must name its 'space'")
        space = get_space(space_name)
        if "ops" in d:
            ops = d["ops"]
        elif "blocks" in d:
            ops = Arch.parse_blocks(str(d["blocks"]))
        elif "stages" in d:
            ops = d["stages"]
        else:
            raise ArchError("no architecture given: expected 'stages', 'ops' or 'blocks'")
        return space.arch(ops, meta=d.get("meta", {}))
    except ArchError as e:
        msg = str(e)
        raise ArchError(msg if msg.startswith(name) else f"{name}: {msg}") from None


def _stage_count_hint(space_name: str, n: int) -> str:
    """``"; space 'x' has 7 stages, this arch 6 (a stage missing?)"`` when the arch names a registered space
    whose stage count differs: the likeliest cause of a skeleton that does not hold together (a tap that
    names a stage that is gone)."""
    want = len(get_space(space_name).stages)
    if want == n:
        return ""
    return f"; space '{space_name}' has {want} stages, this arch {n} (a stage {'missing' if n < want else 'too many'}?)"


__all__ = ["SearchSpace", "StageSpec", "get_space", "list_spaces", "load_arch", "register_space", "with_output_stride"]
