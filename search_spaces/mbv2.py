"""FNA's MobileNetV2-based spaces (FNA_SPEC §3).

The seed's stage widths and strides are kept; each searchable stage gets more layers; every layer
chooses kernel {3,5,7} x expansion {3,6}, and non-first layers may also be ``skip``. The stem and the
first ``k3_e1`` layer (32 -> 16) are fixed.

- ``mbv2_det``: RetinaNet's space, ``num_layers=[4,4,4,4,4,1]``, taps C2..C5 (stages 1, 2, 4, 6),
  MAdds at 800x1088 (§3.2).
- ``mbv2_ssdlite``: the same layout plus the 1280 tail conv; the first layer of the 96->160 stage is
  restricted to e6 ops so SSDLite's head can tap its 576-channel expansion (§3.3); MAdds at 320x320.
- ``mbv2_seg``: DeepLabv3's space, ``num_layers=[4,4,6,6,4,1]`` with output stride 16 through dilation
  (§3.4), tap on the 320-channel output, MAdds at 1024x2048.
- ``mbv2_pose``: FNA++'s pose space (§6.4): mbv2_det's layers plus the 1280 tail, which SimpleBaseline's
  deconvolution head reads (stride 32); MAdds at a 256x192 person crop.
"""
from __future__ import annotations

from fnatune.space import SearchSpace, StageSpec, register_space, with_output_stride

MBV2_OPS = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")
E6_OPS = ("k3_e6", "k5_e6", "k7_e6")
FIRST_LAYER = StageSpec(16, stride=1, layers=1, ops=("k3_e1",))


def _stages(layers: tuple[int, int, int, int, int, int]) -> list[StageSpec]:
    widths_strides = [(24, 2), (32, 2), (64, 2), (96, 1), (160, 2), (320, 1)]
    return [FIRST_LAYER] + [StageSpec(c, stride=s, layers=n, ops=MBV2_OPS) for (c, s), n in zip(widths_strides, layers)]


@register_space("mbv2_det")
def mbv2_det() -> SearchSpace:
    """FNA detection (RetinaNet) space: MobileNetV2 widths, [4,4,4,4,4,1] layers."""
    return SearchSpace(
        name="mbv2_det",
        stages=tuple(_stages((4, 4, 4, 4, 4, 1))),
        taps=("1", "2", "4", "6"),
        input_size=(800, 1088),
        description="FNA detection (RetinaNet) space: MobileNetV2 widths, [4,4,4,4,4,1] layers",
    )


@register_space("mbv2_ssdlite")
def mbv2_ssdlite() -> SearchSpace:
    """FNA SSDLite space: as mbv2_det plus the 1280 tail; e6-only head layer in the 96->160 stage."""
    stages = _stages((4, 4, 4, 4, 4, 1))
    head = stages[5]
    stages[5] = StageSpec(head.out_channels, head.stride, head.layers, head.ops, first_ops=E6_OPS)
    return SearchSpace(
        name="mbv2_ssdlite",
        stages=tuple(stages),
        tail_channels=1280,
        taps=("5.0.expand", "tail"),
        input_size=(320, 320),
        description="FNA SSDLite space: as mbv2_det plus the 1280 tail; e6-only head layer in the 96->160 stage",
    )


@register_space("mbv2_seg")
def mbv2_seg() -> SearchSpace:
    """FNA segmentation (DeepLabv3) space: [4,4,6,6,4,1] layers, output stride 16 by dilation."""
    return SearchSpace(
        name="mbv2_seg",
        stages=tuple(with_output_stride(_stages((4, 4, 6, 6, 4, 1)), output_stride=16)),
        taps=("6",),
        input_size=(1024, 2048),
        description="FNA segmentation (DeepLabv3) space: [4,4,6,6,4,1] layers, output stride 16 by dilation",
    )


@register_space("mbv2_pose")
def mbv2_pose() -> SearchSpace:
    """FNA++ pose (SimpleBaseline) space: mbv2_det's [4,4,4,4,4,1] layers plus the 1280 tail, tapped at stride 32."""
    return SearchSpace(
        name="mbv2_pose",
        stages=tuple(_stages((4, 4, 4, 4, 4, 1))),
        tail_channels=1280,
        taps=("tail",),
        input_size=(256, 192),
        description="FNA++ pose (SimpleBaseline) space: mbv2_det's layers plus the 1280 tail, tapped at stride 32",
    )
