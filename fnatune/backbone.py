"""Our backbones as plain torch modules, for task models that need no OpenMMLab (pose), and loading a backbone's
weights from any checkpoint a run or a library writes. :mod:`fnatune.mm.backbones` wraps the same nets as
mmengine modules.

A backbone module has ``net`` (a :class:`~fnatune.nets.ChildNet` or :class:`~fnatune.nets.SuperNet`) and returns
the tapped features as a tuple, like the mmengine ones, so the search and fine-tune stages treat every task's
model alike (``model.backbone.net``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.errors import FnatuneError
from fnatune.nets import ChildNet, SuperNet
from fnatune.space import get_space, load_arch

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


def child_net(arch: Arch | str | Mapping[str, Any], weights: str | None = None,
              taps: Sequence[str] | None = None) -> ChildNet:
    """The net of a fixed architecture (an Arch, a JSON path or a dict; ``taps`` replaces its own), with
    ``weights`` loaded if given: what this module's and the mmengine backbones hold."""
    a = load_arch(arch)
    net = ChildNet(a.with_taps(list(taps)) if taps is not None else a)
    if weights:
        load_backbone_weights(net, weights)
    return net


def super_net(space: str, weights: str | None = None, alpha_init_std: float = 1e-3) -> SuperNet:
    """The super net of a registered space, with ``weights`` loaded if given."""
    net = SuperNet(get_space(space), alpha_init_std=alpha_init_std)
    if weights:
        load_backbone_weights(net, weights)
    return net


class Backbone(nn.Module):
    """A fixed architecture as a backbone (see :func:`child_net`); returns its taps as a tuple."""

    def __init__(self, arch: Arch | str | Mapping[str, Any], weights: str | None = None,
                 taps: Sequence[str] | None = None) -> None:
        super().__init__()
        self.net = child_net(arch, weights, taps)
        self.arch = self.net.arch
        self.feature_info = self.net.feature_info

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.net(x))


class SuperBackbone(nn.Module):
    """The super net of a registered space, for the search."""

    def __init__(self, space: str, weights: str | None = None, alpha_init_std: float = 1e-3) -> None:
        super().__init__()
        self.net = super_net(space, weights, alpha_init_std)
        self.feature_info = self.net.feature_info

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.net(x))


def build_backbone(cfg: Mapping[str, Any]) -> nn.Module:
    """``{"type": "FNABackbone", "arch": ..., "weights": ...}`` or ``{"type": "FNASuperBackbone", "space": ...}``,
    the dicts the stages hand to every task's model."""
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    if cfg.get("type") == "FNABackbone":
        return Backbone(**kwargs)
    if cfg.get("type") == "FNASuperBackbone":
        return SuperBackbone(**kwargs)
    raise FnatuneError(f"unknown backbone type {cfg.get('type')!r}; expected FNABackbone or FNASuperBackbone")
