"""Our backbones as OpenMMLab modules, shared by mmseg and mmdet (each registers them in its own
``MODELS``: :mod:`fnatune.mm.seg`, :mod:`fnatune.mm.det`).

* ``FNABackbone``: a :class:`~fnatune.nets.ChildNet` from ``arch`` (a JSON path or a dict). In a plain
  mmdet/mmseg config::

      custom_imports = dict(imports=['fnatune.mm.det'], allow_failed_imports=False)
      model = dict(..., backbone=dict(type='FNABackbone', arch='arch.json',
                                      init_cfg=dict(type='Pretrained', checkpoint='backbone.pt')))

  The checkpoint may be our ``backbone.pt`` (ChildNet keys), a whole fine-tuned model's state dict
  (``backbone.net.`` keys) or an mmengine checkpoint (``{'state_dict': ...}``): the prefix is found.
* ``FNASuperBackbone``: a :class:`~fnatune.nets.SuperNet` of a registered space, for the search; the
  searcher sets its mode (``use_path``/``use_mixed``) because library heads call ``backbone(x)``.

Only mmengine is imported here, so this module loads wherever either library does.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmengine.model import BaseModule
from torch import Tensor

from fnatune.backbone import child_net, load_backbone_weights, super_net


class FNABackbone(BaseModule):
    """A fixed architecture (``arch``: JSON path or dict) as a backbone; returns its taps as a tuple."""

    def __init__(self, arch: str | dict[str, Any], weights: str | None = None, taps: Sequence[str] | None = None,
                 init_cfg: Any = None) -> None:
        super().__init__(init_cfg)
        self.net = child_net(arch, weights, taps)
        self.arch = self.net.arch
        self.feature_info = self.net.feature_info

    def init_weights(self) -> None:
        """``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads through :func:`load_backbone_weights`
        (prefix found automatically); other init kinds go to mmengine."""
        cfg = self.init_cfg
        if isinstance(cfg, Mapping) and cfg.get("type") == "Pretrained":
            load_backbone_weights(self.net, cfg["checkpoint"], cfg.get("prefix"))
            self._is_init = True
            return
        super().init_weights()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.net(x))


class FNASuperBackbone(BaseModule):
    """The super net of a registered space (``space``), for the search."""

    def __init__(self, space: str, weights: str | None = None, alpha_init_std: float = 1e-3, init_cfg: Any = None) -> None:
        super().__init__(init_cfg)
        self.net = super_net(space, weights, alpha_init_std)
        self.feature_info = self.net.feature_info

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.net(x))
