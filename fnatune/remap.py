"""Parameter remapping (FNA_SPEC §4): seed -> super net, and seed -> child net, always from the seed.

The rules, at three levels:

- **depth**: layer ``l`` of stage ``b`` takes its parameters from seed layer ``min(l, L_seed(b) - 1)``;
  extra layers copy the stage's *last* seed layer. In a child net skip layers carry nothing and the
  i-th non-skip layer maps to seed layer ``min(i, L-1)`` (what FNA gets after sorting skips to the end).
  In a super net every candidate of layer ``l`` maps to seed layer ``min(l, L-1)``.
- **width**: the overlap of channels is copied, one index set applied consistently to the expand-conv
  outputs, both BNs, the depthwise filters and the project-conv inputs. Default: the first k channels;
  variant ``bn_gamma``: the k hidden channels with the largest ``|gamma|`` of the seed's expand BN.
  New channels (width expansion) are zero, or zero + noise with ``noise=True``; new BN entries keep
  their init (gamma 1, beta 0, mean 0, var 1).
- **kernel**: the seed kernel is placed at the centre of a larger kernel, zeros around (variant
  ``dilation``: on a dilated lattice, 3x3 -> 5x5 at {0,2,4}, 7x7 at {0,3,6}); a smaller kernel is the
  centre crop.

The tensor rules below are pure functions; :func:`remap_into` walks two networks structurally (stem,
stages, layers, tail) and writes the results, so no parameter name is ever parsed. Every tensor of
the target gets a :class:`TensorRecord` in the :class:`RemapReport`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.errors import RemapError
from fnatune.io import atomic_write_json
from fnatune.ops import ConvBNAct, MBConv, kaiming_uniform_like
from fnatune.seeds import Seed
from fnatune.space import SearchSpace

WidthRule = Literal["index", "bn_gamma"]
KernelRule = Literal["centre", "dilation"]
NoiseRegion = Literal["new", "all"]
ACTIONS = ("copied", "cropped", "centre_padded", "lattice_padded", "expanded", "noise", "left_at_init")


@dataclass(frozen=True)
class RemapOptions:
    """Which remapping rules to use. The defaults are FNA's; the others are the paper's ablations.

    ``noise`` is FNA++'s "zero with slight noise" for entries that have no seed counterpart:
    ``noise_scale`` x a Kaiming-uniform sample, added to the new entries only (``noise_region="new"``)
    or, as the maintainer's snippet does, to the whole tensor (``"all"``). Conv weights only.
    """

    width: WidthRule = "index"
    kernel: KernelRule = "centre"
    noise: bool = False
    noise_scale: float = 1e-5
    noise_region: NoiseRegion = "new"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("width", ("index", "bn_gamma")), ("kernel", ("centre", "dilation")),
                              ("noise_region", ("new", "all"))):
            if getattr(self, name) not in allowed:
                raise RemapError(f"remap option {name}={getattr(self, name)!r} is not one of {allowed}")
        if self.noise_scale < 0:
            raise RemapError(f"remap option noise_scale must be >= 0, got {self.noise_scale}")


@dataclass
class TensorRecord:
    """What remapping did to one tensor of the target."""

    target: str
    action: str
    target_shape: tuple[int, ...]
    source: str | None = None
    source_shape: tuple[int, ...] | None = None


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
            "options": asdict(self.options),
            "counts": self.counts(),
            "tensors": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(r).items()} for r in self.records
            ],
        }

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


# ------------------------------------------------------------------------------------------ tensor rules
def kernel_positions(k_src: int, k_dst: int, rule: KernelRule = "centre") -> tuple[list[int], str]:
    """Where the ``k_src`` taps of a seed kernel go in a ``k_dst >= k_src`` kernel, and the placement name."""
    if k_dst == k_src:
        return list(range(k_src)), "copied"
    if rule == "dilation" and k_src > 1 and (k_dst - 1) % (k_src - 1) == 0:
        step = (k_dst - 1) // (k_src - 1)
        return [i * step for i in range(k_src)], "lattice_padded"
    off = (k_dst - k_src) // 2
    return [off + i for i in range(k_src)], "centre_padded"


def remap_conv_weight(
    src: Tensor, dst_shape: tuple[int, ...], out_idx: Tensor, in_idx: Tensor, kernel: KernelRule = "centre"
) -> tuple[Tensor, Tensor, str]:
    """Map a seed conv weight ``[O_s, I_s, k_s, k_s]`` into a new ``dst_shape`` weight.

    Output channel ``j < len(out_idx)`` of the result takes seed channel ``out_idx[j]`` (likewise for
    inputs); spatially the seed kernel is placed (``kernel_positions``) or centre-cropped. Everything else
    is zero. Returns ``(weight, copied_mask, action)``.
    """
    O, I, kh, kw = dst_shape
    ks = src.shape[2]
    if src.shape[2] != src.shape[3] or kh != kw:
        raise RemapError(f"only square kernels are remapped, got {tuple(src.shape)} -> {tuple(dst_shape)}")
    no, ni = len(out_idx), len(in_idx)
    sub = src.index_select(0, out_idx).index_select(1, in_idx)
    new = torch.zeros(dst_shape, dtype=src.dtype)
    mask = torch.zeros(dst_shape, dtype=torch.bool)
    if kh >= ks:
        pos, placement = kernel_positions(ks, kh, kernel)
        p = torch.tensor(pos)
        new[:no, :ni, p[:, None], p[None, :]] = sub
        mask[:no, :ni, p[:, None], p[None, :]] = True
    else:
        off = (ks - kh) // 2
        new[:no, :ni] = sub[:, :, off:off + kh, off:off + kw]
        mask[:no, :ni] = True
        placement = "cropped"
    if no < O or ni < I:
        action = "expanded"
    elif placement != "copied":
        action = placement
    elif no < src.shape[0] or ni < src.shape[1] or not _is_prefix(out_idx) or not _is_prefix(in_idx):
        action = "cropped"
    else:
        action = "copied"
    return new, mask, action


def remap_vector(src: Tensor, dst: Tensor, index: Tensor) -> tuple[Tensor, str]:
    """Entries ``index`` of a seed 1-D tensor into the first ``len(index)`` entries of ``dst`` (rest kept)."""
    if src.dim() == 0:
        return src.clone(), "copied"
    new = dst.detach().clone()
    n = len(index)
    new[:n] = src.index_select(0, index)
    if n < dst.numel():
        return new, "expanded"
    if n < src.numel() or not _is_prefix(index):
        return new, "cropped"
    return new, "copied"


def hidden_index(seed_op: MBConv, width: int, rule: WidthRule = "index") -> Tensor:
    """Seed hidden channels used for a target hidden width ``width`` (sorted, so order is kept)."""
    k = min(width, seed_op.hidden)
    if rule == "index" or k == seed_op.hidden:
        return torch.arange(k)
    bn = seed_op.expand.bn if seed_op.expand is not None else seed_op.dw.bn
    if bn.weight is None:
        raise RemapError("width rule 'bn_gamma' needs BN scales in the seed, but its BN has affine=False")
    top = torch.argsort(bn.weight.detach().abs(), descending=True, stable=True)[:k]
    return torch.sort(top).values


def _is_prefix(index: Tensor) -> bool:
    return bool(torch.equal(index, torch.arange(len(index))))


# ------------------------------------------------------------------------------------------ module walk
class _Writer:
    """Applies the tensor rules to module pairs and records what happened."""

    def __init__(self, target: nn.Module, options: RemapOptions) -> None:
        self.options = options
        self.generator = torch.Generator().manual_seed(options.seed)
        self.records: dict[str, TensorRecord] = {}
        self._names = {id(t): n for n, t in target.state_dict(keep_vars=True).items()}
        self._src_names: dict[int, str] = {}

    def name_sources(self, source: nn.Module) -> None:
        self._src_names = {id(t): n for n, t in source.state_dict(keep_vars=True).items()}

    def _record(self, dst: Tensor, src: Tensor | None, action: str) -> None:
        name = self._names[id(dst)]
        self.records[name] = TensorRecord(
            name, action, tuple(dst.shape),
            self._src_names.get(id(src)) if src is not None else None,
            tuple(src.shape) if src is not None else None,
        )

    @torch.no_grad()
    def conv(self, src: nn.Conv2d, dst: nn.Conv2d, out_idx: Tensor, in_idx: Tensor) -> None:
        if dst.groups != 1 and dst.groups != dst.in_channels:
            raise RemapError(f"grouped conv {self._names[id(dst.weight)]} (groups={dst.groups}) has no remap rule")
        if dst.groups == dst.in_channels and dst.groups > 1:  # depthwise: one input slice per filter
            in_idx = torch.arange(1)
        new, mask, action = remap_conv_weight(src.weight, tuple(dst.weight.shape), out_idx, in_idx,
                                              self.options.kernel)
        opt = self.options
        if opt.noise and opt.noise_scale > 0:
            noise = opt.noise_scale * kaiming_uniform_like(new, self.generator)
            if opt.noise_region == "new":
                noise = noise * (~mask)
            if bool((noise != 0).any()):
                new = new + noise
                action = "noise"
        dst.weight.copy_(new)
        self._record(dst.weight, src.weight, action)

    @torch.no_grad()
    def bn(self, src: nn.BatchNorm2d, dst: nn.BatchNorm2d, idx: Tensor) -> None:
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            d, s = getattr(dst, name, None), getattr(src, name, None)
            if d is None:
                continue
            if s is None:
                self._record(d, None, "left_at_init")
                continue
            new, action = remap_vector(s, d, idx)
            d.copy_(new)
            self._record(d, s, action)

    def conv_bn(self, src: ConvBNAct, dst: ConvBNAct, out_idx: Tensor, in_idx: Tensor) -> None:
        self.conv(src.conv, dst.conv, out_idx, in_idx)
        self.bn(src.bn, dst.bn, out_idx)

    def mbconv(self, src: MBConv, dst: MBConv) -> None:
        cin = torch.arange(min(src.c_in, dst.c_in))
        cout = torch.arange(min(src.c_out, dst.c_out))
        hid = hidden_index(src, dst.hidden, self.options.width)
        if dst.expand is not None and src.expand is not None:
            self.conv_bn(src.expand, dst.expand, hid, cin)
        self.conv_bn(src.dw, dst.dw, hid, hid)
        self.conv(src.project.conv, dst.project.conv, cout, hid)
        self.bn(src.project.bn, dst.project.bn, cout)


def _layer_pairs(seed_net: nn.Module, target: nn.Module) -> Iterator[tuple[MBConv, MBConv]]:
    """(seed layer, target op) pairs following the depth rule."""
    from fnatune.nets import ChildNet, MixedLayer

    for s, (seed_stage, stage) in enumerate(zip(seed_net.stages, target.stages)):
        seed_layers = [m for m in seed_stage if isinstance(m, MBConv)]
        if not seed_layers:
            raise RemapError(f"seed stage {s} has no layers with parameters")
        depth = 0
        for l, layer in enumerate(stage):
            if isinstance(layer, MixedLayer):
                src = seed_layers[min(l, len(seed_layers) - 1)]
                for op in layer.candidates:
                    if isinstance(op, MBConv):
                        yield src, op
                continue
            if not isinstance(layer, MBConv):  # skip
                continue
            position = depth if isinstance(target, ChildNet) else l
            yield seed_layers[min(position, len(seed_layers) - 1)], layer
            depth += 1


def remap_into(seed: Seed, target: nn.Module, options: RemapOptions | None = None) -> RemapReport:
    """Overwrite ``target``'s weights (a ChildNet or SuperNet) with the seed's, remapped. In place."""
    from fnatune.nets import ChildNet, SuperNet

    options = options or RemapOptions()
    if not isinstance(target, (ChildNet, SuperNet)):
        raise RemapError(f"remap target must be a ChildNet or SuperNet, got {type(target).__name__}")
    seed_net = seed.build()
    n_seed, n_target = len(seed_net.stages), len(target.stages)
    if n_seed != n_target:
        raise RemapError(f"seed '{seed.name}' has {n_seed} stages after the stem but the target has {n_target}; "
                         "remapping works stage by stage, so both need the same stage count")
    w = _Writer(target, options)
    w.name_sources(seed_net)
    full = lambda n: torch.arange(n)
    w.conv_bn(seed_net.stem, target.stem, full(min(seed_net.stem.conv.out_channels, target.stem.conv.out_channels)),
              full(min(seed_net.stem.conv.in_channels, target.stem.conv.in_channels)))
    for src, dst in _layer_pairs(seed_net, target):
        w.mbconv(src, dst)
    if target.tail is not None and seed_net.tail is not None:
        w.conv_bn(seed_net.tail, target.tail,
                  full(min(seed_net.tail.conv.out_channels, target.tail.conv.out_channels)),
                  full(min(seed_net.tail.conv.in_channels, target.tail.conv.in_channels)))
    records = []
    for name, t in target.state_dict(keep_vars=True).items():
        if name.startswith("alphas."):
            continue
        records.append(w.records.get(name) or TensorRecord(name, "left_at_init", tuple(t.shape)))
    return RemapReport(seed.name, _describe(target), options, records)


def remap_layer(src: MBConv, dst: MBConv, options: RemapOptions | None = None) -> list[TensorRecord]:
    """Remap one seed MBConv into another MBConv in place (the width and kernel rules, no depth rule)."""
    w = _Writer(dst, options or RemapOptions())
    w.name_sources(src)
    w.mbconv(src, dst)
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
    "hidden_index",
    "kernel_positions",
    "remap",
    "remap_conv_weight",
    "remap_into",
    "remap_layer",
    "remap_vector",
]
