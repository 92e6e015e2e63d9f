# A plain mmseg 1.x config with a searched FNA backbone and FNA's separable-ASPP DeepLabv3 head on
# mmseg's own Cityscapes recipe (512x1024 crops, 80k iterations). Train it with mmseg's tools as usual.
# `arch` may be any arch JSON (a released one, or a `fnatune run`'s arch.json); `init_cfg` as in
# retinanet_fna_coco.py.
_base_ = "mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py"
custom_imports = dict(imports=["fnatune.mm.seg"], allow_failed_imports=False)

arch = "{{ fileDirname }}/../../search_spaces/archs/fna_seg.json"
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    pretrained=None,  # the base names a ResNet checkpoint; ours comes through init_cfg
    backbone=dict(_delete_=True, type="FNABackbone", arch=arch, init_cfg=None),
    decode_head=dict(_delete_=True, type="FNAASPPHead", in_channels=320, channels=256, dilations=(6, 12, 18),
                     num_classes=19, norm_cfg=norm_cfg, align_corners=True,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=None,
)
