"""timm's NAS-found networks as seeds: MnasNet-A1 (``semnasnet_100``), MobileNetV3-Large, EfficientNet-B0,
FBNet-C and SPNASNet (FNA_SPEC §14.2b).

timm is an optional extra (``pip install 'fnatune[timm]'``): only building the reference model imports it, so
fnatune itself never does, and a checkpoint (``.pth`` or ``.safetensors``, timm's key names) is checked against
the reference built with ``pretrained=False``. timm's blocks map onto the MBConv grammar:

* ``DepthwiseSeparableConv`` (``conv_dw``, ``bn1``, ``se``, ``conv_pw``, ``bn2``) is ``k{K}_e1``;
* ``InvertedResidual`` (``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``se``, ``conv_pwl``, ``bn3``) is
  ``k{K}_e{E}``; its ``BatchNormAct2d`` carries the block's activation;
* ``SqueezeExcite`` (``conv_reduce``, ``act1``, ``conv_expand``, ``gate``) is ``se0.25`` (EfficientNet and
  MnasNet-A1: width from the block input, sigmoid, the block's activation inside) or ``sem0.25_hsig``
  (MobileNetV3: width from the hidden channels rounded to 8, hard sigmoid, ReLU inside).

A block of another kind (mixed kernels, CondConv, EdgeResidual), a grouped pointwise conv or TF 'same' padding is
refused with one line naming the block and its kind. MobileNetV3's last block (``ConvBnAct`` 160 -> 960) is the
tail; its head after pooling (``conv_head``, a biased 1x1 conv, and h-swish) travels as the classifier's pre-logits
layer. The seed's metadata (input mean and std, input size, classifier name) comes from timm's
pretrained config.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor, nn

from fnatune.errors import SeedError
from fnatune.seeds import SeedAdapter, register_seed
from fnatune.seeds._convert import BlockParts, ConvBN, SeedLayout, bn_pairs_and_se, build_layout

#: the timm models registered by name (FNA_SPEC §14.2b); any other goes through seed ``timm`` with model=<name>
MODELS = ("semnasnet_100", "mobilenetv3_large_100", "efficientnet_b0", "fbnetc_100", "spnasnet_100")
_ACTS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hswish", nn.SiLU: "silu"}
_BLOCKS = ("DepthwiseSeparableConv", "InvertedResidual")
# timm keeps no SE ratio on the module; 0.25 is every registered generator's, and the converter refuses a block
# whose reduced width this ratio does not give (FNA_SPEC §14.2b)
SE_RATIO = 0.25


def _build(model: str = "efficientnet_b0", **kwargs: Any) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise SeedError(f"seed 'timm_{model}' needs timm: pip install 'fnatune[timm]'") from None
    if model not in timm.list_models():
        raise SeedError(f"timm has no model '{model}' (timm.list_models() names them)")
    return timm.create_model(model, pretrained=False, **kwargs)


def _act_name(module: nn.Module, where: str) -> str:
    for kind, name in _ACTS.items():
        if isinstance(module, kind):
            return name
    if type(module).__name__ in ("Swish", "SiLU"):
        return "silu"
    if type(module).__name__ in ("HardSwish", "HardSwishMe"):
        return "hswish"
    raise SeedError(f"'{where}' uses the activation {type(module).__name__}, which fnatune cannot express")


def _is_hard_sigmoid(module: nn.Module) -> bool:
    return isinstance(module, nn.Hardsigmoid) or type(module).__name__ in ("HardSigmoid", "HardSigmoidMe")


def _check_block(name: str, block: nn.Module) -> None:
    """Refuse, in one line, what the MBConv grammar cannot express (issue 24 item 3)."""
    kind = type(block).__name__
    if kind not in _BLOCKS:
        raise SeedError(f"block '{name}' is a {kind}, a block kind fnatune cannot express (it converts "
                        f"{' and '.join(_BLOCKS)} blocks)")
    dw = block.get_submodule("conv_dw")
    if type(dw) is not nn.Conv2d:
        raise SeedError(f"block '{name}': its depthwise conv is a {type(dw).__name__} (mixed kernels or TF 'same' "
                        "padding), which fnatune cannot express")
    for pw in ("conv_pw", "conv_pwl"):
        conv = getattr(block, pw, None)
        if conv is not None and (type(conv) is not nn.Conv2d or conv.groups != 1):
            what = f"a grouped pointwise conv ({conv.groups} groups)" if isinstance(conv, nn.Conv2d) else type(conv).__name__
            raise SeedError(f"block '{name}': '{pw}' is {what}, which fnatune cannot express")


def _check_plain_conv(model: nn.Module, name: str) -> None:
    conv = model.get_submodule(name)
    k, d = conv.kernel_size[0], conv.dilation[0]
    if type(conv) is not nn.Conv2d or conv.padding != (d * (k - 1) // 2,) * 2:
        raise SeedError(f"'{name}' is a {type(conv).__name__} with padding {conv.padding} (TF 'same' padding?), which "
                        "fnatune cannot express; use the model without the tf_ prefix")


def _layout(model: nn.Module) -> SeedLayout:
    """The seed layout of a timm EfficientNet/MobileNetV3-generator model. The SE's style is read off its gate:
    a hard sigmoid is MobileNetV3's SE (width from the hidden channels), a sigmoid EfficientNet's and MnasNet-A1's
    (width from the block input); the converter then checks the widths."""
    if not hasattr(model, "blocks") or not hasattr(model, "conv_stem"):
        raise SeedError(f"{type(model).__name__} is not a timm EfficientNet or MobileNetV3 model; fnatune converts "
                        "those generator families")
    _check_plain_conv(model, "conv_stem")
    blocks: list[BlockParts] = []
    tail: ConvBN | None = None
    stages = model.get_submodule("blocks")
    for s, stage in enumerate(stages):
        for b, block in enumerate(stage):
            name = f"blocks.{s}.{b}"
            if type(block).__name__ == "ConvBnAct" and s == len(stages) - 1:  # MobileNetV3's 1x1 160 -> 960
                tail = ConvBN(f"{name}.conv", f"{name}.bn1")
                continue
            _check_block(name, block)
            act = _act_name(block.get_submodule("bn1").act, f"{name}.bn1")
            se = getattr(block, "se", None)
            hard_gate = False
            if isinstance(se, nn.Module) and hasattr(se, "conv_reduce"):
                hard_gate = _is_hard_sigmoid(se.gate)
                inner = _act_name(se.act1, f"{name}.se.act1")
                if inner != ("relu" if hard_gate else act):
                    raise SeedError(f"block '{name}': its SE's inner activation {inner} is not what the op grammar "
                                    "gives (ReLU with a hard-sigmoid gate, else the block's)")
            blocks.append(bn_pairs_and_se(model, name, type(se) if isinstance(se, nn.Module) and
                                          hasattr(se, "conv_reduce") else (), ("conv_reduce", "conv_expand"),
                                          SE_RATIO, hard_gate, hard_gate, act))
    if tail is None:
        tail = ConvBN("conv_head", "bn2")
    stem = ConvBN("conv_stem", "bn1")
    net_act = _act_name(model.get_submodule("bn1").act, "bn1")
    # MobileNetV3: pooling, then conv_head (a biased 1x1 conv, i.e. a linear layer) + act2, then the classifier
    pre = "conv_head" if tail.conv != "conv_head" else None
    if pre is not None and (getattr(model, "norm_head", None) is not None and not isinstance(model.norm_head, nn.Identity)):
        raise SeedError(f"{type(model).__name__}'s head has a norm layer after conv_head, which fnatune cannot express")
    return build_layout(model, stem, blocks, tail, act=net_act, classifier="classifier", pre_logits=pre)


def _features(model: nn.Module, x: Tensor) -> Tensor:
    return model.forward_features(x)


def _meta(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    meta = {k: cfg[k] for k in ("mean", "std", "input_size", "classifier", "architecture") if k in cfg}
    if hasattr(model, "act2") and hasattr(model, "conv_head") and not hasattr(model, "bn2"):
        meta["pre_logits_act"] = _act_name(model.act2, "act2")
    return meta


for _model in MODELS:
    register_seed(SeedAdapter(f"timm_{_model}", partial(_build, _model), _layout, _features,
                              description=f"timm {_model} (a NAS-found net); needs the timm extra, local checkpoints",
                              meta=_meta))
register_seed(SeedAdapter("timm", _build, _layout, _features, meta=_meta,
                          description="any timm EfficientNet/MobileNetV3-generator model (model=<timm name>, default "
                                      "efficientnet_b0) whose blocks fnatune can express; needs the timm extra"))
