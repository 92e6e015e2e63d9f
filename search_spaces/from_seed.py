"""FNA spaces derived from any registered inverted-residual seed (issue 24 item 4), for the NAS networks.

FNA built its spaces by hand from MobileNetV2 (``search_spaces/mbv2.py``). :func:`seed_space` builds the same kind
of space from a seed's own layout, so MobileNetV3, EfficientNet, MnasNet-A1, FBNet or SPNASNet seeds get one
without a hand-written table:

* the seed's stem, stages, widths and strides, its activation and BN eps;
* the first stage (the seed's e1 layer, 32 -> 16 in most of them) is fixed to the seed's op, as FNA fixes
  MobileNetV2's ``k3_e1``;
* every other layer chooses kernel {3,5,7} x expansion {3,6} (``kernels``, ``expansions``) and, except a stage's
  first layer, ``skip``; each candidate keeps the stage's SE, gate and activation tokens (a seed stage has one
  set of them in every registered seed; a stage that mixes them is refused);
* the seed's depths plus ``extra_layers`` per searchable stage (by FNA's depth rule, extra layers are remapped
  from the stage's last seed layer);
* the task's taps: detection C2..C5 (the last layer of each stride, 4 to 32; RetinaNet reads C3..C5), MAdds at
  800x1088; segmentation at output stride 16 by dilation, the last stage tapped, MAdds at 1024x2048; pose the
  seed's tail conv at stride 32 (SimpleBaseline), MAdds at 256x192.

Registered: ``mbv3_large_{det,seg,pose}`` and ``effb0_{det,seg,pose}``.
"""
from __future__ import annotations

from collections.abc import Sequence

from fnatune.arch import Arch
from fnatune.blocks import SKIP, parse_op
from fnatune.blocks.mbconv import MBConvSpec
from fnatune.errors import ArchError
from fnatune.space import SearchSpace, StageSpec, register_space, with_output_stride

TASK_SIZES = {"det": (800, 1088), "seg": (1024, 2048), "pose": (256, 192)}


def _seed_arch(seed: str) -> Arch:
    """The seed's own layout, read from its reference model built on the meta device (no weights, no download)."""
    import torch

    from fnatune.seeds import get_seed_adapter

    adapter = get_seed_adapter(seed)
    with torch.device("meta"):
        return adapter.layout(adapter.build()).arch


def _stage_extras(seed: str, s: int, ops: Sequence[str]) -> MBConvSpec:
    specs = [parse_op(o) for o in ops if o != SKIP]
    if not specs or not all(isinstance(sp, MBConvSpec) for sp in specs):
        raise ArchError(f"seed '{seed}' stage {s}: a seed space is built from inverted-residual (MBConv) seeds")
    extras = {sp.extras for sp in specs}  # type: ignore[union-attr]
    if len(extras) != 1:
        raise ArchError(f"seed '{seed}' stage {s} mixes SE/gate/activation across its layers ({', '.join(ops)}); "
                        "a seed space gives one candidate set per stage")
    return specs[0]  # type: ignore[return-value]


def seed_space(name: str, seed: str, task: str, extra_layers: Sequence[int] | None = None,
               kernels: Sequence[int] = (3, 5, 7), expansions: Sequence[int] = (3, 6), allow_skip: bool = True,
               description: str = "") -> SearchSpace:
    """The FNA space of ``seed`` for ``task`` ("det", "seg" or "pose"); see the module docstring."""
    if task not in TASK_SIZES:
        raise ArchError(f"seed space task '{task}': expected one of {', '.join(TASK_SIZES)}")
    arch = _seed_arch(seed)
    sk = arch.skeleton
    n = len(arch.ops)
    extra = tuple(extra_layers) if extra_layers is not None else (0,) * (n - 1)
    if len(extra) != n - 1:
        raise ArchError(f"seed space '{name}': extra_layers has {len(extra)} entries, the seed has {n - 1} "
                        "searchable stages")
    stages = [StageSpec(sk.stages[0].out_channels, sk.stages[0].stride, len(arch.ops[0]), (arch.ops[0][0],),
                        allow_skip=False)]
    for s in range(1, n):
        ref = _stage_extras(seed, s, arch.ops[s])
        ops = tuple(MBConvSpec(k, e, ref.se, ref.se_from_hidden, ref.hard_gate, ref.act).name
                    for k in kernels for e in expansions)
        stages.append(StageSpec(sk.stages[s].out_channels, sk.stages[s].stride, len(arch.ops[s]) + extra[s - 1], ops,
                                allow_skip=allow_skip))
    tail = None
    if task == "seg":
        stages = with_output_stride(stages, output_stride=16, stem_stride=sk.stem_out_stride)
        taps: tuple[str, ...] = (str(n - 1),)
    elif task == "pose":
        if sk.tail_channels is None:
            raise ArchError(f"seed space '{name}': the pose space taps the seed's tail conv, which '{seed}' has not")
        tail, taps = sk.tail_channels, ("tail",)
    else:
        taps = _stride_taps(sk.stem_out_stride, [st.stride for st in stages], (4, 8, 16, 32))
    return SearchSpace(name=name, stages=tuple(stages), stem_channels=sk.stem_channels, stem_stride=sk.stem_stride,
                       stem_kernel=sk.stem_kernel, tail_channels=tail, act=sk.act, bn_eps=sk.bn_eps, taps=taps,
                       input_size=TASK_SIZES[task],
                       description=description or f"FNA {task} space from seed '{seed}': kernel "
                                                  f"{{{', '.join(map(str, kernels))}}} x expansion "
                                                  f"{{{', '.join(map(str, expansions))}}}, the seed's SE/activations",
                       meta={"seed": seed, "task": task})


def _stride_taps(stem_stride: int, strides: Sequence[int], wanted: Sequence[int]) -> tuple[str, ...]:
    """The last stage at each wanted cumulative stride."""
    out, current = {}, stem_stride
    for s, st in enumerate(strides):
        current *= st
        if current in wanted:
            out[current] = str(s)
    missing = [w for w in wanted if w not in out]
    if missing:
        raise ArchError(f"the seed has no stage at stride(s) {missing}")
    return tuple(out[w] for w in wanted)


def _register(name: str, seed: str, task: str, what: str) -> None:
    def factory() -> SearchSpace:
        return seed_space(name, seed, task)

    factory.__doc__ = f"{what} {task} space (from the seed's layout: kernel x expansion per layer, its SE and acts)."
    register_space(name)(factory)


for _task in TASK_SIZES:
    _register(f"mbv3_large_{_task}", "mobilenet_v3_large", _task, "MobileNetV3-Large")
    _register(f"effb0_{_task}", "efficientnet_b0", _task, "EfficientNet-B0")
