"""The generic tensor rules of parameter remapping (FNA_SPEC §4.3–§4.6, §14.3) and the :class:`TensorWriter`
that block families write their remap rule with.

This module sits below :mod:`fnatune.blocks`: it knows tensors, convs and BNs, never a block family, so a family
imports the writer's type from here and :mod:`fnatune.remap` (the depth rule and the walk over two networks, which
asks each block's family) sits above both. No import circle, type-only ones included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ConfigDict, ValidationError
from torch import Tensor, nn

from fnatune.config.sections import GroupRule, KernelRule, RemapCfg
from fnatune.errors import RemapError
from fnatune.layers import ConvBNAct, kaiming_uniform_like

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


__all__ = ["ACTIONS", "RemapOptions", "TensorRecord", "TensorWriter", "channel_scores", "kernel_positions",
           "remap_conv_weight", "remap_grouped_weight", "remap_vector", "top_channels"]
