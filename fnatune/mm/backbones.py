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
from pathlib import Path
from typing import Any

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.errors import FnatuneError
from fnatune.nets import ChildNet, SuperNet
from fnatune.space import get_space

_PREFIXES = ("", "net.", "backbone.net.", "module.backbone.net.")


def _state_of(obj: Any) -> Mapping[str, Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    if isinstance(obj, Mapping):
        return obj
    raise FnatuneError(f"expected a state dict, got {type(obj).__name__}")


def load_backbone_weights(net: nn.Module, checkpoint: str | Path, prefix: str | None = None) -> None:
    """Load ``checkpoint`` into ``net`` (a ChildNet/SuperNet), finding the key prefix if not given.

    Loaded with ``weights_only=True`` (never unpickles code); a mismatch names the keys."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FnatuneError(f"backbone checkpoint not found: {path}")
    try:
        state = _state_of(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:
        raise FnatuneError(f"cannot read backbone checkpoint {path}: {e}") from e
    want = set(net.state_dict())
    for p in ([prefix] if prefix is not None else _PREFIXES):
        sub = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if want <= set(sub):
            net.load_state_dict({k: sub[k] for k in want})
            return
    missing = sorted(want - set(state))[:5]
    raise FnatuneError(f"{path} does not hold this backbone's weights (tried prefixes {list(_PREFIXES)}; "
                       f"e.g. missing {missing}). Was it saved for another arch?")


class FNABackbone(BaseModule):
    """A fixed architecture (``arch``: JSON path or dict) as a backbone; returns its taps as a tuple."""

    def __init__(self, arch: str | dict[str, Any], weights: str | None = None, taps: Sequence[str] | None = None,
                 init_cfg: Any = None) -> None:
        super().__init__(init_cfg)
        a = Arch.load(arch) if isinstance(arch, (str, Path)) else Arch.from_dict(arch)
        if taps is not None:
            a = a.with_taps(list(taps))
        self.arch = a
        self.net = ChildNet(a)
        if weights:
            load_backbone_weights(self.net, weights)
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
        self.net = SuperNet(get_space(space), alpha_init_std=alpha_init_std)
        if weights:
            load_backbone_weights(self.net, weights)
        self.feature_info = self.net.feature_info

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.net(x))
