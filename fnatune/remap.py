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
rules of :class:`TensorWriter`. So no parameter name is ever parsed. Every tensor of the target gets a
:class:`TensorRecord` in the :class:`RemapReport`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ConfigDict, ValidationError
from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.blocks import SKIP, Block, Skip, family_of, parse_op
from fnatune.config.sections import GroupRule, KernelRule, RemapCfg
from fnatune.errors import RemapError
from fnatune.io import atomic_write_json
from fnatune.layers import ConvBNAct, kaiming_uniform_like
from fnatune.seeds import Seed
from fnatune.space import SearchSpace

ACTIONS = ("copied", "cropped", "centre_padded", "lattice_padded", "expanded", "regrouped", "noise", "left_at_init")


class RemapOptions(RemapCfg):
    """Which remapping rules to use: the pipeline's ``remap`` section (:class:`~fnatune.config.sections.RemapCfg`,
    FNA's rules by default, the paper's ablations as options) plus ``seed``, which seeds the noise sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 0

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise RemapError(f"remap option {key}={err.get('input')!r}: {err['msg']}") from None


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
            "options": self.options.model_dump(mode="json"),
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
    src: Tensor, dst_shape: tuple[int, ...], out_idx: Tensor, in_idx: Tensor, kernel: KernelRule = "centre",
    with_mask: bool = True,
) -> tuple[Tensor, Tensor | None, str]:
    """Map a seed conv weight ``[O_s, I_s, k_s, k_s]`` into a new ``dst_shape`` weight.

    Output channel ``j < len(out_idx)`` of the result takes seed channel ``out_idx[j]`` (likewise for
    inputs); spatially the seed kernel is placed (``kernel_positions``) or centre-cropped. Everything else
    is zero. Returns ``(weight, copied_mask, action)``; the mask (which entries are the seed's) only ``with_mask``.
    """
    sub = src.index_select(0, out_idx).index_select(1, in_idx)
    ones = torch.ones(sub.shape[:2], dtype=torch.bool) if with_mask else None
    new, mask, placement = _place(sub, ones, src.shape[2], dst_shape, kernel)
    no, ni = len(out_idx), len(in_idx)
    if no < dst_shape[0] or ni < dst_shape[1]:
        action = "expanded"
    elif placement != "copied":
        action = placement
    elif no < src.shape[0] or ni < src.shape[1] or not _is_prefix(out_idx) or not _is_prefix(in_idx):
        action = "cropped"
    else:
        action = "copied"
    return new, mask, action


def remap_grouped_weight(
    src: Tensor, src_groups: int, dst_shape: tuple[int, ...], dst_groups: int, out_idx: Tensor, in_idx: Tensor,
    kernel: KernelRule = "centre", rule: GroupRule = "block_diagonal", with_mask: bool = True,
) -> tuple[Tensor, Tensor | None, str]:
    """Map a seed conv of ``src_groups`` groups into one of ``dst_groups`` groups (FNA_SPEC §4.6).

    Target output ``t`` is seed output ``out_idx[t]``; target input ``a`` is seed input ``in_idx[a]`` (absolute
    channel indices). ``block_diagonal``: entry ``(t, i)`` of the target (``i`` local to ``t``'s group, so input
    ``a = group(t) * I_t + i``) is the seed's weight on input ``in_idx[a]`` if that input lies in the seed group
    of ``out_idx[t]``, else zero: the seed's block-diagonal dense weight read through the target's blocks, which
    computes the seed's function whenever the target's groups contain the seed's. ``leading``: input ``a = i``,
    the first inputs, for every group (a dense seed's leading slice). Returns ``(weight, mask, action)``.
    """
    O, I_per = dst_shape[0], dst_shape[1]
    O_s, I_s_per = src.shape[0], src.shape[1]
    if O % dst_groups or O_s % src_groups:
        raise RemapError(f"groups {src_groups} -> {dst_groups} do not divide the outputs {O_s} -> {O}")
    no = len(out_idx)
    t = torch.arange(no)[:, None]
    i = torch.arange(I_per)[None, :]
    a = (t // (O // dst_groups)) * I_per + i if rule == "block_diagonal" else i.expand(no, I_per)
    valid = a < len(in_idx)
    s_in = in_idx[a.clamp(max=max(len(in_idx) - 1, 0))]
    s_out = out_idx[t].expand_as(s_in)
    g_in = s_in // I_s_per
    ok = valid & (s_out // (O_s // src_groups) == g_in)
    local = (s_in - g_in * I_s_per).clamp(0, I_s_per - 1)
    sub = src[s_out, local] * ok[:, :, None, None].to(src.dtype)
    new, mask, placement = _place(sub, ok if with_mask else None, src.shape[2], dst_shape, kernel)
    if src_groups != dst_groups:
        action = "regrouped"
    elif no < O or bool((~ok).any()):
        action = "expanded"
    elif placement != "copied":
        action = placement
    elif no < O_s or not _is_prefix(out_idx) or not _is_prefix(in_idx):
        action = "cropped"
    else:
        action = "copied"
    return new, mask, action


def _place(sub: Tensor, submask: Tensor | None, k_src: int, dst_shape: tuple[int, ...], kernel: KernelRule
           ) -> tuple[Tensor, Tensor | None, str]:
    """``sub`` (``[o, i, k_src, k_src]``) into the leading ``[o, i]`` corner of a zero ``dst_shape`` weight, its
    kernel placed by the kernel rule (or centre-cropped); ``submask`` says which ``(o, i)`` entries are the seed's
    (None: no mask is wanted, which saves a weight-sized tensor per conv)."""
    _, _, kh, kw = dst_shape
    if sub.shape[2] != sub.shape[3] or kh != kw:
        raise RemapError(f"only square kernels are remapped, got {k_src}x{sub.shape[3]} -> {kh}x{kw}")
    no, ni = sub.shape[0], sub.shape[1]
    new = torch.zeros(dst_shape, dtype=sub.dtype)
    mask = torch.zeros(dst_shape, dtype=torch.bool) if submask is not None else None
    if kh >= k_src:
        pos, placement = kernel_positions(k_src, kh, kernel)
        if pos == list(range(pos[0], pos[0] + k_src)):  # contiguous (copied, centre): a slice, not a gather
            where: Any = (slice(0, no), slice(0, ni), slice(pos[0], pos[0] + k_src), slice(pos[0], pos[0] + k_src))
        else:
            p = torch.tensor(pos)
            where = (slice(0, no), slice(0, ni), p[:, None], p[None, :])
        new[where] = sub
        if mask is not None:
            mask[where] = submask[:, :, None, None]  # type: ignore[index]
    else:
        off = (k_src - kh) // 2
        new[:no, :ni] = sub[:, :, off:off + kh, off:off + kw]
        if mask is not None:
            mask[:no, :ni] = submask[:, :, None, None]  # type: ignore[index]
        placement = "cropped"
    return new, mask, placement


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


def top_channels(scores: Tensor, k: int) -> Tensor:
    """The ``k`` channels with the largest ``scores`` (ties: the lower index), in ascending index order
    (FNA's Algorithm 1: ``sort(topk_indices(v, k))``), so the kept channels keep their order."""
    top = torch.argsort(scores.detach(), descending=True, stable=True)[:k]
    return torch.sort(top).values


def channel_scores(rule: str, bn: nn.BatchNorm2d | None, weight: Tensor | None) -> Tensor:
    """Per-channel ranking scores of a width rule: ``|gamma|``, or the std / L1 norm over all but dim 0 of
    ``weight`` (population std, so a one-tap filter scores 0 rather than NaN)."""
    if rule == "bn_gamma":
        if bn is None or bn.weight is None:
            raise RemapError("width rule 'bn_gamma' needs BN scales in the seed, but its BN has affine=False")
        return bn.weight.detach().abs()
    if rule in ("std", "l1"):
        if weight is None:
            raise RemapError(f"width rule '{rule}' needs the seed's filters of that channel dimension")
        flat = weight.detach().reshape(weight.shape[0], -1).double()
        return flat.std(dim=1, unbiased=False) if rule == "std" else flat.abs().sum(dim=1)
    raise RemapError(f"width rule '{rule}' is not implemented by the writer")


def _is_prefix(index: Tensor) -> bool:
    return bool(torch.equal(index, torch.arange(len(index))))


# ------------------------------------------------------------------------------------------ the writer
class TensorWriter:
    """Applies the tensor rules to module pairs and records what happened. Block families call it from
    their remap rule (:meth:`fnatune.blocks.BlockFamily.remap`) and never touch a tensor name."""

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

    @staticmethod
    def leading(n: int) -> Tensor:
        """The first ``n`` channels: the overlap rule for channels no width rule ranks (block inputs, outputs)."""
        return torch.arange(n)

    def channels(self, n_src: int, n_dst: int, bn: nn.BatchNorm2d | None = None, weight: Tensor | None = None) -> Tensor:
        """Which of a seed's ``n_src`` channels fill the first ``min(n_src, n_dst)`` of the target, by the
        width rule: the first ones (``index``), or the top k by a score (FNA_SPEC §13.3): the BN scale
        ``|gamma|`` (``bn_gamma``), or the standard deviation (``std``) or L1 norm (``l1``) of each channel's
        seed filter. ``bn`` is the BN that scales that channel dimension and ``weight`` the seed tensor whose
        dim 0 it is."""
        k = min(n_src, n_dst)
        rule = self.options.width
        if rule == "index" or k == n_src:
            return torch.arange(k)
        return top_channels(channel_scores(rule, bn, weight), k)

    @torch.no_grad()
    def conv(self, src: nn.Conv2d, dst: nn.Conv2d, out_idx: Tensor, in_idx: Tensor) -> None:
        """``out_idx`` / ``in_idx``: the seed's output / input channels (absolute) for the target's first ones."""
        shape = tuple(dst.weight.shape)
        opt = self.options
        noisy = opt.noise and opt.noise_scale > 0
        want = noisy and opt.noise_region == "new"  # only then does the mask of the seed's entries matter
        depthwise = dst.groups == dst.in_channels and dst.groups > 1 and src.groups == src.in_channels
        if depthwise:  # one input slice per filter, both sides
            new, mask, action = remap_conv_weight(src.weight, shape, out_idx, torch.arange(1), opt.kernel, want)
        elif src.groups == 1 and dst.groups == 1:
            new, mask, action = remap_conv_weight(src.weight, shape, out_idx, in_idx, opt.kernel, want)
        else:
            new, mask, action = remap_grouped_weight(src.weight, src.groups, shape, dst.groups, out_idx, in_idx,
                                                     opt.kernel, opt.group, want)
        if noisy:
            noise = opt.noise_scale * kaiming_uniform_like(new, self.generator)
            if mask is not None:
                noise = noise * (~mask)
            if bool((noise != 0).any()):
                new = new + noise
                action = "noise"
        dst.weight.copy_(new)
        self._record(dst.weight, src.weight, action)
        if dst.bias is not None:
            self.bias(src.bias, dst.bias, out_idx)

    @torch.no_grad()
    def bias(self, src: Tensor | None, dst: Tensor, idx: Tensor) -> None:
        """A conv's bias (SE convs have them): the seed's entries ``idx`` into the first ``len(idx)``, every other
        entry 0, so a new output channel starts from its (zero or noise) weights alone (FNA_SPEC §14.3)."""
        if src is None:
            dst.zero_()
            self._record(dst, None, "expanded")
            return
        new, action = remap_vector(src, torch.zeros_like(dst), idx)
        dst.copy_(new)
        self._record(dst, src, action)

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

    def overlap(self, src: ConvBNAct, dst: ConvBNAct) -> None:
        """A fixed conv + BN (stem, tail): the leading overlap of both channel dimensions."""
        self.conv_bn(src, dst, self.leading(min(src.conv.out_channels, dst.conv.out_channels)),
                     self.leading(min(src.conv.in_channels, dst.conv.in_channels)))

    def block(self, src: Block, dst: Block, where: str) -> None:
        """A seed block into a target block of the same family, by that family's rule."""
        fam, theirs = family_of(src), family_of(dst)
        if fam is None or theirs is None or fam is not theirs:
            raise RemapError(f"{where}: the seed's block is {_kind(src)} but the target's is {_kind(dst)}; a block "
                             "is remapped only into a block of its own family")
        fam.remap(self, src, dst)


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
        w.block(src, dst, where)
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
    w.block(src, dst, "block")
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
