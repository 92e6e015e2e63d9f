"""Networks built from architectures: :class:`ChildNet` (one op per layer) and :class:`SuperNet`.

Both share one layout, so remapping and weight extraction address the same module paths:
``stem``, ``stages.<s>.<l>`` (an op, or for the super net a :class:`MixedLayer` whose candidates are
``stages.<s>.<l>.candidates.<i>``) and ``tail``. ``forward`` returns the tapped feature maps in the
order of the skeleton's taps; ``feature_info`` says their channels and strides, so any neck or head
plugs in.

The super net keeps its architecture parameters (one logit vector per searchable layer) apart from its
weights: :meth:`SuperNet.arch_parameters` and :meth:`SuperNet.weight_parameters`. It runs in two modes
(FNA_SPEC §5.2): a single-path forward given one candidate index per searchable layer (weight steps),
and a softmax-mixed forward over all candidates (arch steps).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fnatune.arch import Arch, Skeleton, Tap
from fnatune.blocks import SKIP, build_op
from fnatune.errors import ArchError
from fnatune.layers import BNOptions, ConvBNAct, Stem
from fnatune.space import SearchSpace


@dataclass(frozen=True)
class FeatureInfo:
    """One tapped feature map: where it comes from, its channels and its stride w.r.t. the input."""

    tap: str
    channels: int
    stride: int


def _feature_info(skeleton: Skeleton, channels: Callable[[str], int]) -> list[FeatureInfo]:
    infos = []
    for tap in skeleton.taps:
        t = Tap.parse(tap)
        if t.where == "stem":
            stride = skeleton.stem_out_stride
        elif t.where == "tail":
            stride = skeleton.stride_before(len(skeleton.stages))
        elif t.is_expand:  # the 1x1 expansion runs before the layer's (possibly strided) depthwise conv
            stride = skeleton.stride_before(t.stage if t.layer == 0 else t.stage + 1)
        else:
            stride = skeleton.stride_before(t.stage + 1)
        infos.append(FeatureInfo(tap, channels(tap), stride))
    return infos


class _Backbone(nn.Module):
    """Shared skeleton walk: stem -> stages -> tail, collecting taps."""

    skeleton: Skeleton
    stem: Stem
    stages: nn.ModuleList
    tail: ConvBNAct | None

    def _build_frame(self, skeleton: Skeleton, bn: BNOptions) -> None:
        self.skeleton = skeleton
        self.stem = Stem(skeleton.in_channels, skeleton.stem_channels, skeleton.stem_kernel, skeleton.stem_stride,
                         skeleton.stem_pool, act=skeleton.act, bn=bn)
        self.tail = (ConvBNAct(skeleton.stages[-1].out_channels, skeleton.tail_channels, 1, act=skeleton.act, bn=bn)
                     if skeleton.tail_channels is not None else None)
        self._taps = [Tap.parse(t) for t in skeleton.taps]
        self._stage_taps = {t.stage for t in self._taps if t.where == "stage" and not t.is_expand}
        self._expand_taps = {(t.stage, t.layer) for t in self._taps if t.is_expand}

    def _walk(self, x: Tensor, run_layer: Callable[[int, int, nn.Module, Tensor, bool], tuple[Tensor, Tensor | None]]
              ) -> list[Tensor]:
        found: dict[str, Tensor] = {}
        x = self.stem(x)
        found["stem"] = x
        for s, stage in enumerate(self.stages):
            for l, layer in enumerate(stage):
                want = (s, l) in self._expand_taps
                x, expansion = run_layer(s, l, layer, x, want)
                if want:
                    assert expansion is not None
                    found[f"{s}.{l}.expand"] = expansion
            if s in self._stage_taps:
                found[str(s)] = x
        if self.tail is not None:
            x = self.tail(x)
            found["tail"] = x
        if not self._taps:
            return [x]
        return [found[str(t)] for t in self._taps]


class ChildNet(_Backbone):
    """``Arch`` -> ``nn.Module``. Skip layers are kept as identities so layer indices match the arch.

    ``layer_bn`` overrides the BN options of individual layers ``(stage, layer)``; it exists so a child
    can use exactly the BN mode of the super net's candidate ops (see :meth:`SuperNet.extract_child`).
    """

    def __init__(
        self,
        arch: Arch,
        bn: BNOptions | None = None,
        layer_bn: Mapping[tuple[int, int], BNOptions] | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        sk = arch.skeleton
        bn = bn or BNOptions(eps=sk.bn_eps)
        layer_bn = dict(layer_bn or {})
        self._build_frame(sk, bn)
        self.stages = nn.ModuleList()
        for s, ops in enumerate(arch.ops):
            stage = nn.ModuleList()
            for l, op in enumerate(ops):
                c_in, c_out, stride = sk.layer_io(s, l)
                stage.append(build_op(op, c_in, c_out, stride, sk.stages[s].dilation, sk.act, layer_bn.get((s, l), bn)))
            self.stages.append(stage)
        self.feature_info = _feature_info(sk, arch.tap_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        def run(s: int, l: int, layer: nn.Module, h: Tensor, want: bool) -> tuple[Tensor, Tensor | None]:
            return layer.forward_with_expansion(h) if want else (layer(h), None)

        return self._walk(x, run)


class MixedLayer(nn.Module):
    """All candidate ops of one searchable layer (``candidates.<i>``)."""

    def __init__(self, names: Sequence[str], ops: Sequence[nn.Module]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.candidates = nn.ModuleList(ops)
        # running the candidates twice gives the same result and leaves no trace (no BN running statistics)
        self.recomputable = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                                    for m in self.candidates.modules())

    def forward_single(self, x: Tensor, index: int, want_expansion: bool = False) -> tuple[Tensor, Tensor | None]:
        op = self.candidates[index]
        return op.forward_with_expansion(x) if want_expansion else (op(x), None)

    def forward_mixed(self, x: Tensor, weights: Tensor, want_expansion: bool = False, recompute: bool = False
                      ) -> tuple[Tensor, Tensor | None]:
        """``sum_o weights[o] * op_o(x)`` (and the same mix of expansion activations if asked).

        With ``recompute`` (and autograd recording), the candidates' inner activations are not kept for the
        backward pass but recomputed there, one candidate at a time: the layer then holds its input and the
        mixing weights instead of every candidate's activations. Gradients are the
        plain mix's. It is skipped when a candidate's BN tracks running statistics (the recompute would
        update them twice); FNA's candidate BN keeps none."""
        if recompute and torch.is_grad_enabled() and self.recomputable:
            out = _RecomputedMix.apply(self, want_expansion, x, weights)
            return (out[0], out[1]) if want_expansion else (out, None)
        return self._mix(x, weights, want_expansion)

    def _mix(self, x: Tensor, weights: Tensor, want_expansion: bool) -> tuple[Tensor, Tensor | None]:
        out: Tensor | None = None
        mixed_exp: Tensor | None = None
        for w, op in zip(weights, self.candidates):
            if want_expansion:
                y, e = op.forward_with_expansion(x)
                mixed_exp = w * e if mixed_exp is None else mixed_exp + w * e
            else:
                y = op(x)
            out = w * y if out is None else out + w * y
        assert out is not None
        return out, mixed_exp


class _RecomputedMix(torch.autograd.Function):
    """``sum_o w_o * op_o(x)`` run without a graph; the backward pass reruns each candidate alone with one,
    so at most one candidate's activations exist at a time. The gradient of ``w_o`` is ``<g, op_o(x)>``,
    that of ``x`` is ``sum_o w_o * J_o(x)^T g``, and the candidates' own weights (when they require grad)
    receive ``w_o * J_o(theta)^T g``: what autograd gives the plain mix. Autocast is re-entered as it was."""

    @staticmethod
    def forward(ctx: Any, layer: MixedLayer, want_expansion: bool, x: Tensor, weights: Tensor) -> Any:
        ctx.layer, ctx.want = layer, want_expansion
        ctx.autocast = _autocast_state(x.device.type)
        ctx.save_for_backward(x, weights)
        with torch.no_grad():
            out, exp = layer._mix(x, weights, want_expansion)
        return (out, exp) if want_expansion else out

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        x, weights = ctx.saved_tensors
        g_out, g_exp = grads[0], (grads[1] if ctx.want else None)
        need_x = ctx.needs_input_grad[2]
        g_x = torch.zeros_like(x) if need_x else None
        g_w = torch.zeros_like(weights)
        device_type, enabled, dtype = ctx.autocast
        for o, op in enumerate(ctx.layer.candidates):
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                xi = x.detach().requires_grad_(need_x)
                if ctx.want:
                    y, e = op.forward_with_expansion(xi)
                    outs, g_outs = [y, e], [g_out, g_exp]
                else:
                    outs, g_outs = [op(xi)], [g_out]
            with torch.no_grad():
                g_w[o] = sum((go * t).sum() for t, go in zip(outs, g_outs) if go is not None).to(g_w.dtype)
            pairs = [(t, weights[o] * go) for t, go in zip(outs, g_outs) if go is not None and t.requires_grad]
            if pairs:
                inputs = [xi] if need_x else []
                torch.autograd.backward([t for t, _ in pairs], [go.to(t.dtype) for t, go in pairs],
                                        inputs=inputs + [p for p in op.parameters() if p.requires_grad] or None)
            if need_x and xi.grad is not None:
                g_x += xi.grad
        return None, None, g_x, g_w


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    dt = device_type if device_type in ("cuda", "cpu") else "cpu"
    return dt, torch.is_autocast_enabled(dt), torch.get_autocast_dtype(dt)


class SuperNet(_Backbone):
    """``SearchSpace`` -> mixed layers + architecture parameters.

    Candidate ops use ``candidate_bn`` (FNA: no affine parameters and no running statistics, so they
    always normalise with the current batch). Fixed layers (one candidate), the stem and the tail use
    ordinary BN. The logits are initialised as ``alpha_init_std * N(0, 1)`` (FNA: 1e-3).

    ``recompute_mixed`` (a share in [0, 1]): a mixed forward recomputes the candidates of some mixed layers
    in the backward pass instead of keeping their activations (:meth:`MixedLayer.forward_mixed`): the
    layers that hold the most activation memory, until they add up to this share of what a plain mixed
    step keeps (0: none, 1: every layer). Same gradients; memory falls by about the share, time rises by
    about share x one forward pass (``benchmarks/search_memory.py``). Which layers is measured once, on
    the first mixed forward that records gradients, from a probe at :attr:`PROBE_SIZE`.
    """

    PROBE_SIZE = (128, 128)

    def __init__(
        self,
        space: SearchSpace,
        candidate_bn: BNOptions | None = None,
        bn: BNOptions | None = None,
        alpha_init_std: float = 1e-3,
        recompute_mixed: float = 0.0,
    ) -> None:
        super().__init__()
        self.space = space
        sk = space.skeleton
        self.bn = bn or BNOptions(eps=sk.bn_eps)
        self.candidate_bn = candidate_bn or BNOptions(eps=sk.bn_eps, affine=False, track_running_stats=False)
        self._build_frame(sk, self.bn)
        self.positions = space.searchable_layers()
        self._pos_index = {p: i for i, p in enumerate(self.positions)}
        self._plans: dict[float, set[tuple[int, int]]] = {0.0: set(), 1.0: set(self._pos_index)}  # share -> layers
        self.recompute_mixed = recompute_mixed
        self.stages = nn.ModuleList()
        for s, st in enumerate(space.stages):
            stage = nn.ModuleList()
            for l in range(st.layers):
                c_in, c_out, stride = sk.layer_io(s, l)
                names = space.candidates(s, l)
                if len(names) == 1:
                    stage.append(build_op(names[0], c_in, c_out, stride, st.dilation, sk.act, self.bn))
                else:
                    ops = [build_op(n, c_in, c_out, stride, st.dilation, sk.act, self.candidate_bn) for n in names]
                    stage.append(MixedLayer(names, ops))
            self.stages.append(stage)
        self.alphas = nn.ParameterList(
            nn.Parameter(alpha_init_std * torch.randn(len(space.candidates(s, l)))) for s, l in self.positions
        )
        self.feature_info = _feature_info(sk, space.first_arch().tap_channels)

    # ----------------------------------------------------------------------------------- parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        arch_ids = {id(p) for p in self.alphas}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    def probabilities(self, temperature: float = 1.0) -> list[Tensor]:
        """softmax(alpha / T) per searchable layer."""
        return [torch.softmax(a / temperature, dim=-1) for a in self.alphas]

    # ----------------------------------------------------------------------------------- forward
    def use_path(self, indices: Sequence[int]) -> None:
        """Make argument-less ``forward(x)`` run one path (a weight step), e.g. inside an mmseg/mmdet model."""
        if len(indices) != len(self.positions):
            raise ArchError(f"expected {len(self.positions)} path indices, got {len(indices)}")
        self._mode = ("path", [int(i) for i in indices])

    def use_mixed(self, temperature: float = 1.0) -> None:
        """Make argument-less ``forward(x)`` run the softmax(alpha/T)-mixed super net (an arch step)."""
        self._mode = ("mixed", float(temperature))

    @property
    def mode(self) -> tuple[str, Any]:
        return getattr(self, "_mode", ("mixed", 1.0))

    def forward(self, x: Tensor, indices: Sequence[int] | None = None, temperature: float | None = None) -> list[Tensor]:
        """Single-path forward when ``indices`` (one per searchable layer) is given, mixed when
        ``temperature`` is given; with neither, the mode set by :meth:`use_path`/:meth:`use_mixed`
        (default: mixed, T=1). Heads built by other libraries call ``backbone(x)``, hence the mode."""
        if indices is None and temperature is None:
            kind, value = self.mode
            if kind == "path":
                indices = value
            else:
                temperature = value
        if indices is not None:
            if len(indices) != len(self.positions):
                raise ArchError(f"expected {len(self.positions)} path indices, got {len(indices)}")
            path = [int(i) for i in indices]

            def run(s: int, l: int, layer: nn.Module, h: Tensor, want: bool) -> tuple[Tensor, Tensor | None]:
                if isinstance(layer, MixedLayer):
                    return layer.forward_single(h, path[self._pos_index[(s, l)]], want)
                return layer.forward_with_expansion(h) if want else (layer(h), None)
        else:
            weights = self.probabilities(1.0 if temperature is None else temperature)
            recompute = self._recompute_plan(x) if torch.is_grad_enabled() else set()

            def run(s: int, l: int, layer: nn.Module, h: Tensor, want: bool) -> tuple[Tensor, Tensor | None]:
                if isinstance(layer, MixedLayer):
                    return layer.forward_mixed(h, weights[self._pos_index[(s, l)]], want, (s, l) in recompute)
                return layer.forward_with_expansion(h) if want else (layer(h), None)

        return self._walk(x, run)

    # ----------------------------------------------------------------------------------- recompute
    @property
    def recompute_mixed(self) -> float:
        return self._share

    @recompute_mixed.setter
    def recompute_mixed(self, share: float | bool) -> None:
        share = float(share)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"recompute_mixed is a share of the mixed step's activations in [0, 1], got {share}")
        self._share = share
        self._recompute = self._plans.get(share)  # None: planned on the next mixed forward recording gradients

    def _recompute_plan(self, x: Tensor) -> set[tuple[int, int]]:
        if self._recompute is None:
            self._recompute = set()  # the probe itself mixes the plain way
            held = self.activation_bytes(x)
            total, freed, plan = sum(held.values()), 0, set()
            for pos in sorted(held, key=held.__getitem__, reverse=True):
                if freed >= self._share * total:
                    break
                plan.add(pos)
                freed += held[pos]
            self._recompute = self._plans[self._share] = plan
        return self._recompute

    def activation_bytes(self, like: Tensor) -> dict[tuple[int, int], int]:
        """Per mixed layer, the bytes a plain mixed forward keeps for the backward pass of an arch step
        (weights frozen, alpha trainable), measured on a probe batch of :attr:`PROBE_SIZE` (they scale
        with the input's area alike). Runs in eval mode, so no running statistic moves."""
        owner: list[tuple[int, int] | None] = [None]
        held: dict[tuple[int, int], int] = {pos: 0 for pos in self._pos_index if isinstance(self._layer(pos), MixedLayer)}
        seen: set[int] = set()

        def pack(t: Tensor) -> Tensor:
            key = t.untyped_storage().data_ptr()
            if owner[0] is not None and key not in seen:
                seen.add(key)
                held[owner[0]] += t.untyped_storage().nbytes()
            return t

        hooks = []
        for pos in held:
            for op in self._layer(pos).candidates:
                hooks.append(op.register_forward_pre_hook(lambda m, i, pos=pos: owner.__setitem__(0, pos)))
                hooks.append(op.register_forward_hook(lambda m, i, o: owner.__setitem__(0, None)))
        flags = [(p, p.requires_grad) for p in self.parameters()]
        arch_ids = {id(a) for a in self.alphas}
        was_training = self.training
        try:
            for p, _ in flags:
                p.requires_grad_(id(p) in arch_ids)
            self.eval()
            # a generator of its own: the global RNG drives the heads' dropout, and a resumed search must see
            # the masks the uninterrupted one saw whenever this probe runs
            gen = torch.Generator(device=like.device).manual_seed(0)
            probe = torch.randn(2, like.shape[1], *self.PROBE_SIZE, device=like.device, dtype=like.dtype, generator=gen)
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = self(probe, temperature=1.0)
            del out
        finally:
            for h in hooks:
                h.remove()
            for p, flag in flags:
                p.requires_grad_(flag)
            self.train(was_training)
        return held

    def _layer(self, pos: tuple[int, int]) -> nn.Module:
        return self.stages[pos[0]][pos[1]]

    # ----------------------------------------------------------------------------------- paths & archs
    def sample_path(self, generator: torch.Generator | None = None, uniform: bool = False,
                    temperature: float = 1.0) -> list[int]:
        """One candidate index per searchable layer: uniform, or drawn independently from softmax(alpha/T)."""
        with torch.no_grad():
            out = []
            for a in self.alphas:
                p = torch.full_like(a, 1.0 / a.numel()) if uniform else torch.softmax(a.detach() / temperature, -1)
                out.append(int(torch.multinomial(p.cpu().float(), 1, generator=generator)))
        return out

    def arch_of(self, indices: Sequence[int]) -> Arch:
        return self.space.arch_from_indices(indices)

    def derive(self) -> Arch:
        """FNA derivation (§5.7): argmax alpha per layer, then move skips to the end of each stage."""
        indices = [int(torch.argmax(a.detach())) for a in self.alphas]
        return self.arch_of(indices).sorted_skips()

    def _source_of(self, s: int, l: int, op: str) -> nn.Module:
        """The module of this super net that holds layer ``(s, l)``'s weights when it runs ``op``."""
        layer = self.stages[s][l]
        return layer.candidates[layer.names.index(op)] if isinstance(layer, MixedLayer) else layer

    def _copy_into(self, child: ChildNet, arch: Arch, strict: bool) -> None:
        """Module by module (stem, every layer's chosen op, tail), the tensors of this net's module go into
        the child's. ``strict``: the child's module has exactly those tensors; otherwise the ones this net
        lacks (the BN state candidate BNs do not keep) stay at the child's init."""
        pairs: list[tuple[nn.Module, nn.Module]] = [(self.stem, child.stem)]
        if self.tail is not None and child.tail is not None:
            pairs.append((self.tail, child.tail))
        pairs += [(self._source_of(s, l, op), child.stages[s][l]) for s, l, op in arch.layers() if op != SKIP]
        for src, dst in pairs:
            if strict:
                dst.load_state_dict(src.state_dict(), strict=True)
                continue
            have = src.state_dict()
            with torch.no_grad():
                for name, t in dst.state_dict().items():
                    if name in have:
                        t.copy_(have[name])

    def inherit_child(self, arch: Arch) -> ChildNet:
        """A plain :class:`ChildNet` of ``arch`` (ordinary BN) with this super net's weights: conv weights
        and the fixed layers' BN state are copied; candidate BNs keep none, so the child's BNs there start
        at their init. This is how a child inherits super-net weights (an FNA ablation; FNA itself remaps
        from the seed)."""
        self.space.validate(arch)
        child = ChildNet(arch, bn=self.bn)
        self._copy_into(child, arch, strict=False)
        return child

    def extract_child(self, arch: Arch) -> ChildNet:
        """A :class:`ChildNet` of ``arch`` with this super net's weights and BN modes (candidate layers keep
        the candidates' batch-statistics BN), so it computes exactly this net's single path."""
        self.space.validate(arch)
        layer_bn = {p: self.candidate_bn for p in self.positions if arch.ops[p[0]][p[1]] != SKIP}
        child = ChildNet(arch, bn=self.bn, layer_bn=layer_bn)
        self._copy_into(child, arch, strict=True)
        return child
