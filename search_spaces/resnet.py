"""FNA++'s ResNet search spaces, as far as they are known (FNA_SPEC §4.6, §11): a reconstruction.

The paper's ResNet table ("Table 7") could not be read; what is known is that FNA++ adapts ResNet seeds, that
the space involves grouped convolutions (hence "group remapping") and that the table lists no skip op [I#20].
The choices made here, each an explicit option of :func:`resnet_space`:

* the seed's stage layout: a 7x7 stem + max-pool, four stages at strides 4/8/16/32 with the seed's widths and
  block type (basic for ResNet-18/34, bottleneck with expansion 4 for ResNet-50/101/152);
* per block, the spatial conv chooses its kernel from {3, 5, 7} and its group count from {1, 2, 4}
  (``kernels``, ``groups``); the widths are the seed's;
* no ``skip`` (``allow_skip=True`` adds it to every non-first layer);
* the seed's depths (``extra_layers`` adds layers per stage; by FNA's depth rule they copy the stage's last
  seed block, FNA_SPEC §4.2);
* detection taps C2..C5 (RetinaNet uses C3..C5 and P6/P7 on the input, as mmdet builds it for ResNets), MAdds
  at 800x1088; segmentation at output stride 16 by dilation (the last stage runs at stride 1, dilation 2, all its
  blocks alike, as in the MobileNetV2 space), tap on the last stage, MAdds at 1024x2048.
"""
from __future__ import annotations

from collections.abc import Sequence

from fnatune.space import SearchSpace, StageSpec, register_space, with_output_stride

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STRIDES = (1, 2, 2, 2)


def resnet_ops(bottleneck: bool, kernels: Sequence[int] = (3, 5, 7), groups: Sequence[int] = (1, 2, 4),
               expansion: int = 4) -> tuple[str, ...]:
    """Every (kernel, groups) candidate of a basic block or a bottleneck of ``expansion``."""
    suffix = f"_e{expansion}" if bottleneck else ""
    return tuple(f"r_k{k}_g{g}{suffix}" for k in kernels for g in groups)


def resnet_space(name: str, depth: int, task: str, extra_layers: Sequence[int] = (0, 0, 0, 0),
                 allow_skip: bool = False, kernels: Sequence[int] = (3, 5, 7), groups: Sequence[int] = (1, 2, 4),
                 description: str = "") -> SearchSpace:
    """A ResNet-``depth`` space for ``task`` ("det" or "seg"); see the module docstring for the options."""
    if depth not in DEPTHS:
        raise ValueError(f"resnet depth {depth}: expected one of {sorted(DEPTHS)}")
    bottleneck = depth >= 50
    widths = (256, 512, 1024, 2048) if bottleneck else (64, 128, 256, 512)
    ops = resnet_ops(bottleneck, kernels, groups)
    stages = [StageSpec(c, stride=s, layers=n + extra, ops=ops, allow_skip=allow_skip)
              for c, s, n, extra in zip(widths, STRIDES, DEPTHS[depth], extra_layers)]
    if task == "seg":
        stages = with_output_stride(stages, output_stride=16, stem_stride=4)
        taps, size = ("3",), (1024, 2048)
    else:
        taps, size = ("0", "1", "2", "3"), (800, 1088)
    return SearchSpace(name=name, stages=tuple(stages), stem_channels=64, stem_kernel=7, stem_stride=2, stem_pool=2,
                       act="relu", taps=taps, input_size=size,
                       description=description or f"FNA++ ResNet-{depth} {task} space (reconstructed): kernel "
                                                  f"{{{', '.join(map(str, kernels))}}} x groups "
                                                  f"{{{', '.join(map(str, groups))}}} per block, no skip")


@register_space("resnet18_det")
def resnet18_det() -> SearchSpace:
    """ResNet-18 detection space: basic blocks [2,2,2,2], taps C2..C5."""
    return resnet_space("resnet18_det", 18, "det")


@register_space("resnet18_seg")
def resnet18_seg() -> SearchSpace:
    """ResNet-18 segmentation space: basic blocks [2,2,2,2], output stride 16."""
    return resnet_space("resnet18_seg", 18, "seg")


@register_space("resnet50_det")
def resnet50_det() -> SearchSpace:
    """ResNet-50 detection space: bottlenecks [3,4,6,3], taps C2..C5."""
    return resnet_space("resnet50_det", 50, "det")


@register_space("resnet50_seg")
def resnet50_seg() -> SearchSpace:
    """ResNet-50 segmentation space: bottlenecks [3,4,6,3], output stride 16."""
    return resnet_space("resnet50_seg", 50, "seg")


@register_space("resnet18_det_small")
def resnet18_det_small() -> SearchSpace:
    """ResNet-18 detection space with kernel {3,5} x groups {1,2}: the CPU-sized variant the tiny pipelines use."""
    return resnet_space("resnet18_det_small", 18, "det", kernels=(3, 5), groups=(1, 2))


@register_space("resnet18_seg_small")
def resnet18_seg_small() -> SearchSpace:
    """ResNet-18 segmentation space with kernel {3,5} x groups {1,2}: the CPU-sized variant the tiny pipelines use."""
    return resnet_space("resnet18_seg_small", 18, "seg", kernels=(3, 5), groups=(1, 2))
