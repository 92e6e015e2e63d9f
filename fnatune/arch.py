"""Architectures: a :class:`Skeleton` (the fixed macro structure) plus the ops chosen per layer.

The skeleton says what FNA never searches: stem (a KxK conv, and a max-pool for ResNets), stage widths,
strides and dilations, the optional 1x1
"tail" conv (320 -> 1280 in MobileNetV2), the activation, BN eps and the feature taps. A
:class:`~fnatune.space.SearchSpace` is a skeleton plus candidate ops per layer; an :class:`Arch` is a
skeleton plus one op per layer. A seed network's own layout is an ``Arch`` too (with no space).

Arch files are JSON. The full form is self-contained; a short form names a registered space and gives
only the ops (``"ops": [[...], ...]`` or ``"blocks": "k3_e1 | k3_e6 skip | ..."``).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from fnatune.blocks import SKIP, inner_width, parse_op
from fnatune.errors import ArchError, MissingPathError
from fnatune.layers import check_activation

ARCH_FORMAT = 1


@dataclass(frozen=True)
class StageShape:
    """Output channels, stride and dilation of one stage (shared by every layer of it)."""

    out_channels: int
    stride: int = 1
    dilation: int = 1


@dataclass(frozen=True)
class Tap:
    """Where a feature map is taken from.

    Written as a string in files: ``"stem"``, ``"tail"``, ``"S"`` (output of stage S) or
    ``"S.L.expand"`` (the expansion activation inside layer L of stage S, SSDLite's head tap).
    """

    where: Literal["stem", "stage", "tail"]
    stage: int = -1
    layer: int = -1

    @staticmethod
    def parse(text: str) -> Tap:
        text = str(text).strip()
        if text in ("stem", "tail"):
            return Tap(text)  # type: ignore[arg-type]
        parts = text.split(".")
        try:
            if len(parts) == 1:
                return Tap("stage", int(parts[0]))
            if len(parts) == 3 and parts[2] == "expand":
                return Tap("stage", int(parts[0]), int(parts[1]))
        except ValueError:
            pass
        raise ArchError(f"bad tap '{text}': expected 'stem', 'tail', '<stage>' or '<stage>.<layer>.expand'")

    @property
    def is_expand(self) -> bool:
        return self.where == "stage" and self.layer >= 0

    def __str__(self) -> str:
        if self.where != "stage":
            return self.where
        return f"{self.stage}.{self.layer}.expand" if self.is_expand else str(self.stage)


@dataclass(frozen=True)
class Skeleton:
    """The fixed macro structure every architecture of a space shares."""

    stages: tuple[StageShape, ...]
    stem_channels: int = 32
    stem_stride: int = 2
    tail_channels: int | None = None
    stem_kernel: int = 3
    stem_pool: int = 1  # stride of a 3x3 max-pool after the stem conv (ResNet: 2); 1 = none
    act: str = "relu6"
    bn_eps: float = 1e-5
    taps: tuple[str, ...] = ()
    in_channels: int = 3

    def __post_init__(self) -> None:
        check_activation(self.act)
        if self.stem_kernel % 2 == 0 or self.stem_kernel < 1 or self.stem_pool < 1 or self.stem_stride < 1:
            raise ArchError(f"stem: the kernel must be odd and the strides >= 1, got kernel {self.stem_kernel}, "
                            f"stride {self.stem_stride}, pool {self.stem_pool}")
        if not self.stages:
            raise ArchError("a skeleton needs at least one stage")
        for tap in self.taps:
            t = Tap.parse(tap)
            if t.where == "stage" and not 0 <= t.stage < len(self.stages):
                raise ArchError(f"tap '{tap}' names stage {t.stage}, but there are {len(self.stages)} stages")
            if t.where == "tail" and self.tail_channels is None:
                raise ArchError("tap 'tail' needs tail_channels, which this skeleton does not have")

    def stage_in_channels(self, stage: int) -> int:
        return self.stem_channels if stage == 0 else self.stages[stage - 1].out_channels

    @property
    def stem_out_stride(self) -> int:
        """Stride of the stem's output (its conv's and its pool's)."""
        return self.stem_stride * self.stem_pool

    def stride_before(self, stage: int) -> int:
        """Cumulative stride of the input of ``stage``."""
        s = self.stem_out_stride
        for shape in self.stages[:stage]:
            s *= shape.stride
        return s

    @property
    def out_channels(self) -> int:
        return self.tail_channels if self.tail_channels is not None else self.stages[-1].out_channels

    def layer_io(self, stage: int, layer: int) -> tuple[int, int, int]:
        """``(c_in, c_out, stride)`` of layer ``layer`` of ``stage`` (only the first layer changes them)."""
        shape = self.stages[stage]
        c_in = self.stage_in_channels(stage) if layer == 0 else shape.out_channels
        return c_in, shape.out_channels, shape.stride if layer == 0 else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "stem": {"channels": self.stem_channels, "stride": self.stem_stride, "kernel": self.stem_kernel,
                     "pool": self.stem_pool},
            "tail_channels": self.tail_channels,
            "act": self.act,
            "bn_eps": self.bn_eps,
            "taps": list(self.taps),
        }


@dataclass(frozen=True)
class Arch:
    """One architecture: a skeleton and the op of every layer (``ops[stage][layer]``).

    Structural rules are checked on construction (stage count, op names, no ``skip`` in a first
    layer); whether the ops are allowed by a particular space is :meth:`SearchSpace.validate`'s job.
    """

    skeleton: Skeleton
    ops: tuple[tuple[str, ...], ...]
    space: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        ops = tuple(tuple(stage) for stage in self.ops)
        object.__setattr__(self, "ops", ops)
        n = len(self.skeleton.stages)
        if len(ops) != n:
            raise ArchError(f"the arch has {len(ops)} stages but its skeleton has {n}")
        for s, stage_ops in enumerate(ops):
            if not stage_ops:
                raise ArchError(f"stage {s} has no layers; every stage needs at least one")
            for l, op in enumerate(stage_ops):
                try:
                    parse_op(op)
                except ArchError as e:
                    raise ArchError(f"stage {s} layer {l}: {e}") from None
            if stage_ops[0] == SKIP:
                raise ArchError(
                    f"stage {s} layer 0 is 'skip', but the first layer of a stage changes stride/channels "
                    "and cannot be skipped"
                )
        for tap in self.skeleton.taps:
            t = Tap.parse(tap)
            if t.is_expand:
                if t.layer >= len(ops[t.stage]) or ops[t.stage][t.layer] == SKIP:
                    raise ArchError(f"tap '{tap}' needs a block with an inner activation at stage {t.stage} "
                                    f"layer {t.layer}")

    # ----------------------------------------------------------------------------------- views
    @property
    def num_layers(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.ops)

    @property
    def depths(self) -> tuple[int, ...]:
        """Effective depth per stage: the number of non-skip layers."""
        return tuple(sum(op != SKIP for op in s) for s in self.ops)

    def layers(self) -> list[tuple[int, int, str]]:
        return [(s, l, op) for s, stage in enumerate(self.ops) for l, op in enumerate(stage)]

    def tap_channels(self, tap: str) -> int:
        t = Tap.parse(tap)
        if t.where == "stem":
            return self.skeleton.stem_channels
        if t.where == "tail":
            assert self.skeleton.tail_channels is not None
            return self.skeleton.tail_channels
        if t.is_expand:
            c_in, _, _ = self.skeleton.layer_io(t.stage, t.layer)
            width = inner_width(self.ops[t.stage][t.layer], c_in)
            if width is None:
                raise ArchError(f"tap '{tap}': op '{self.ops[t.stage][t.layer]}' has no inner activation to tap")
            return width
        return self.skeleton.stages[t.stage].out_channels

    # ----------------------------------------------------------------------------------- edits
    def sorted_skips(self) -> Arch:
        """Move every ``skip`` to the end of its stage, keeping the order of the other ops (FNA §5.7)."""
        ops = tuple(tuple([o for o in s if o != SKIP] + [o for o in s if o == SKIP]) for s in self.ops)
        return replace(self, ops=ops)

    def taps_at_strides(self, strides: Sequence[int]) -> tuple[str, ...]:
        """The output of the last stage at each output stride in ``strides`` (RetinaNet's C2..C5 are strides
        4/8/16/32): what a detector taps when an arch does not say."""
        sk = self.skeleton
        last = {sk.stride_before(s + 1): str(s) for s in range(len(sk.stages))}
        missing = [s for s in strides if s not in last]
        if missing:
            raise ArchError(f"the arch has no stage at output stride {missing}; its stages end at strides {sorted(last)}")
        return tuple(last[s] for s in strides)

    def with_taps(self, taps: Sequence[str]) -> Arch:
        return replace(self, skeleton=replace(self.skeleton, taps=tuple(str(t) for t in taps)))

    # ----------------------------------------------------------------------------------- text
    def block_string(self) -> str:
        """Compact human form: stages separated by ``|``, layers by spaces."""
        return " | ".join(" ".join(stage) for stage in self.ops)

    @staticmethod
    def parse_blocks(text: str) -> tuple[tuple[str, ...], ...]:
        stages = [s.split() for s in text.split("|")]
        return tuple(tuple(s) for s in stages)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"fnatune_arch": ARCH_FORMAT, "space": self.space}
        d.update(self.skeleton.to_dict())
        d["stages"] = [
            {"out_channels": sh.out_channels, "stride": sh.stride, "dilation": sh.dilation, "ops": list(ops)}
            for sh, ops in zip(self.skeleton.stages, self.ops)
        ]
        d["blocks"] = self.block_string()
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> Path:
        from fnatune.io import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "arch") -> Arch:
        """Build from the full (self-contained) JSON form; ``source`` names the file in errors. A short form (a
        space's name and its ops) and the check against a named space need the space catalog:
        :func:`fnatune.space.load_arch` reads both forms."""
        if not isinstance(d, Mapping):
            raise ArchError(f"{source}: expected a JSON object, got {type(d).__name__}")
        try:
            return _arch_from_dict(d, source)
        except ArchError as e:
            msg = str(e)
            raise ArchError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    @classmethod
    def load(cls, path: str | Path) -> Arch:
        """A full-form arch file (what runs write); :func:`fnatune.space.load_arch` reads short forms too."""
        return cls.from_dict(read_arch_json(path), source=str(path))


def read_arch_json(path: str | Path) -> Any:
    """The JSON of an arch file, or one clear line."""
    p = Path(path)
    if not p.is_file():
        raise MissingPathError(f"arch file '{p}' does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ArchError(f"{p}: not valid JSON ({e})") from None


ARCH_KEYS = {"fnatune_arch", "space", "in_channels", "stem", "tail_channels", "act", "bn_eps", "taps",
             "stages", "blocks", "ops", "meta"}


def _arch_from_dict(d: Mapping[str, Any], source: str) -> Arch:
    unknown = sorted(set(d) - ARCH_KEYS)
    if unknown:
        raise ArchError(f"unknown key(s) {unknown}; expected some of {sorted(ARCH_KEYS)}")
    space_name = d.get("space")
    full = "stages" in d and all(isinstance(s, Mapping) for s in d["stages"])
    if full:
        stages = d["stages"]
        try:
            shapes = tuple(StageShape(int(s["out_channels"]), int(s.get("stride", 1)), int(s.get("dilation", 1)))
                           for s in stages)
            ops = tuple(tuple(s["ops"]) for s in stages)
            stem = d.get("stem", {})
            skeleton = Skeleton(
                stages=shapes,
                stem_channels=int(stem.get("channels", 32)),
                stem_stride=int(stem.get("stride", 2)),
                stem_kernel=int(stem.get("kernel", 3)),
                stem_pool=int(stem.get("pool", 1)),
                tail_channels=None if d.get("tail_channels") is None else int(d["tail_channels"]),
                act=str(d.get("act", "relu6")),
                bn_eps=float(d.get("bn_eps", 1e-5)),
                taps=tuple(str(t) for t in d.get("taps", ())),
                in_channels=int(d.get("in_channels", 3)),
            )
        except ArchError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ArchError(f"malformed 'stages' entry ({type(e).__name__}: {e}); each stage needs "
                            "'out_channels', 'stride', 'dilation' and 'ops'") from None
        return Arch(skeleton, ops, space_name, d.get("meta", {}))
    if space_name is None:
        raise ArchError("a short-form arch (only 'ops' or 'blocks') must name its 'space'")
    raise ArchError(f"a short-form arch (the ops of space '{space_name}', no skeleton) is read with its space: "
                    "fnatune.space.load_arch (as the CLI and pipelines read arch files)")
