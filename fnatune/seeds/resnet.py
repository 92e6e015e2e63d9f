"""torchvision's ResNets as seeds: ResNet-18/34/50/101/152, ResNeXt-50/101 and Wide ResNet-50/101, exactly.

A torchvision ResNet is a 7x7 stem conv (stride 2) + BN + ReLU + 3x3 max-pool (stride 2), then four stages of
BasicBlocks or Bottlenecks (``layer1`` ... ``layer4``), then average pooling and ``fc``. In our layout that is a
skeleton with a 7x7 stem and a pool, four stages, and one ResNet-family op per block (``r_k3_g1`` for a basic
block, ``r_k3_g{groups}_e{C_out / width}`` for a bottleneck), with the tensors copied across by module: the
converted net computes what torchvision computes.
"""
from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from fnatune.arch import Arch, Skeleton, StageShape
from fnatune.blocks.resnet import RESNET
from fnatune.errors import SeedError
from fnatune.seeds import SeedAdapter, register_seed
from fnatune.seeds._convert import SeedLayout

_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
BUILDERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def _build(builder: str, **kwargs: object) -> nn.Module:
    import torchvision.models as tvm

    return getattr(tvm, builder)(weights=None, **kwargs)


def _features(model: nn.Module, x: Tensor) -> Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def _block_op(block: nn.Module, where: str) -> str:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if isinstance(block, BasicBlock):
        k, g = block.conv1.kernel_size[0], block.conv1.groups
        if block.conv2.kernel_size[0] != k or block.conv2.groups != g:
            raise SeedError(f"block '{where}': its two convs differ in kernel or groups; cannot convert")
        return RESNET.spec(k, g, None).name
    if isinstance(block, Bottleneck):
        width, c_out = block.conv2.out_channels, block.conv3.out_channels
        if c_out % width:
            raise SeedError(f"block '{where}': output width {c_out} is not a multiple of its inner width {width}")
        return RESNET.spec(block.conv2.kernel_size[0], block.conv2.groups, c_out // width).name
    raise SeedError(f"block '{where}' is a {type(block).__name__}, not a torchvision BasicBlock or Bottleneck")


def _layout(model: nn.Module) -> SeedLayout:
    pairs = {"stem.conv": "conv1", "stem.bn": "bn1"}
    shapes, ops = [], []
    for s in range(4):
        layer = model.get_submodule(f"layer{s + 1}")
        first = layer[0]
        stride = (first.conv2 if hasattr(first, "conv3") else first.conv1).stride[0]
        dilation = (first.conv2 if hasattr(first, "conv3") else first.conv1).dilation[0]
        c_out = (first.conv3 if hasattr(first, "conv3") else first.conv2).out_channels
        shapes.append(StageShape(c_out, stride, dilation))
        stage_ops = []
        for l, block in enumerate(layer):
            where = f"layer{s + 1}.{l}"
            stage_ops.append(_block_op(block, where))
            convs = ("conv1", "conv2", "conv3") if hasattr(block, "conv3") else ("conv1", "conv2")
            for i, c in enumerate(convs, start=1):
                pairs[f"stages.{s}.{l}.{c}.conv"] = f"{where}.{c}"
                pairs[f"stages.{s}.{l}.{c}.bn"] = f"{where}.bn{i}"
            if block.downsample is not None:
                pairs[f"stages.{s}.{l}.downsample.conv"] = f"{where}.downsample.0"
                pairs[f"stages.{s}.{l}.downsample.bn"] = f"{where}.downsample.1"
        ops.append(tuple(stage_ops))
    bn_eps = {float(m.eps) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    if len(bn_eps) != 1:
        raise SeedError(f"the seed's BN layers use several eps values {sorted(bn_eps)}; one is expected")
    skeleton = Skeleton(stages=tuple(shapes), stem_channels=model.conv1.out_channels, stem_stride=model.conv1.stride[0],
                        stem_kernel=model.conv1.kernel_size[0], stem_pool=model.maxpool.stride, act="relu",
                        bn_eps=bn_eps.pop(), taps=("3",), in_channels=model.conv1.in_channels)
    keys = set(model.state_dict())
    key_map = {f"{ours}.{sfx}": f"{theirs}.{sfx}" for ours, theirs in pairs.items() for sfx in _SUFFIXES
               if f"{theirs}.{sfx}" in keys}
    return SeedLayout(Arch(skeleton, tuple(ops)), key_map, {"weight": "fc.weight", "bias": "fc.bias"})


for _name in BUILDERS:
    register_seed(SeedAdapter(_name, partial(_build, _name), _layout, _features, torchvision_model=_name,
                              description=f"torchvision {_name} (ResNet family), ReLU"))
