# A plain mmdet 3.x config with a searched FNA backbone: mmdet's own RetinaNet recipe (1x schedule,
# COCO), with only the backbone and the FPN inputs changed. Train it with mmdet's tools as usual:
#   python tools/train.py pipelines/mm/retinanet_fna_coco.py   (from an mmdet checkout; or `mim train mmdet ...`)
# `arch` may be any arch JSON: a released one, or the arch.json of a `fnatune run`.
# `init_cfg` loads the fine-tuned backbone of a run (stages/finetune/backbone.pt), a whole model's
# state dict, or an mmengine checkpoint; the key prefix is found automatically.
_base_ = "mmdet::retinanet/retinanet_r50_fpn_1x_coco.py"
custom_imports = dict(imports=["fnatune.mm.det"], allow_failed_imports=False)

arch = "{{ fileDirname }}/../../search_spaces/archs/fna_retinanet.json"
model = dict(
    backbone=dict(_delete_=True, type="FNABackbone", arch=arch,
                  init_cfg=None),  # e.g. dict(type="Pretrained", checkpoint="runs/det/stages/finetune/backbone.pt")
    neck=dict(in_channels=[24, 32, 96, 320], start_level=1, add_extra_convs="on_input", num_outs=5),
)
