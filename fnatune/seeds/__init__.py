"""Seed networks: ImageNet-style classifiers converted into our canonical net.

``load_seed(name, weights=...)`` returns a :class:`Seed`: the seed's own :class:`~fnatune.arch.Arch`
and a state dict keyed like ``ChildNet(seed.arch)``. The conversion is exact: the converted net
computes what the original computes. From then on, remapping only maps *our* net of one arch onto
*our* net of another, whatever family the seed came from.

``weights`` may be ``None`` (the family's random init), a local checkpoint path, or a torchvision
weights name such as ``IMAGENET1K_V1`` (downloaded, so only where the machine can reach the internet).

Every public module of this package registers one or more seed families (found automatically); other
packages add theirs under the ``fnatune.seeds`` entry-point group. An adapter also says how to read its
reference model's features (``features``), so every registered seed is checked against its source library.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.errors import SeedError
from fnatune.registry import Registry, import_submodules, load_plugins
from fnatune.seeds._checkpoint import (
    check_state_dict,
    fetch_torchvision_weights,
    looks_like_path,
    read_checkpoint,
)
from fnatune.seeds._convert import SeedLayout


@dataclass(frozen=True)
class SeedAdapter:
    """How to build a seed family's reference model and read its layout."""

    name: str
    build: Callable[..., nn.Module]  # reference model with random init; kwargs like width_mult
    layout: Callable[[nn.Module], SeedLayout]
    features: Callable[[nn.Module, Tensor], Tensor]  # the reference model's last feature map (our last tap)
    torchvision_model: str | None = None  # name for torchvision.models.get_model_weights
    description: str = ""
    # what travels with the seed from its library (timm: input mean/std, input size, classifier name)
    meta: Callable[[nn.Module], dict[str, Any]] | None = None


@dataclass
class Seed:
    """A converted seed: its own architecture, canonical weights and (if present) its classifier."""

    name: str
    arch: Arch
    state_dict: dict[str, Tensor]
    classifier: dict[str, Tensor] | None = None
    source: str = "random init"
    meta: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The seed as a :class:`~fnatune.nets.ChildNet` in eval mode (features at the arch's taps)."""
        from fnatune.nets import ChildNet

        net = ChildNet(self.arch)
        net.load_state_dict(self.state_dict, strict=True)
        return net.eval()

    def save(self, path: str | Path) -> Path:
        """Write the seed (arch, canonical weights, classifier) as one ``weights_only``-loadable file."""
        from fnatune.io import atomic_torch_save

        return atomic_torch_save({"format": SEED_FORMAT, "name": self.name, "arch": json.dumps(self.arch.to_dict()),
                                  "state_dict": self.state_dict, "classifier": self.classifier,
                                  "source": self.source, "meta": json.dumps(self.meta, default=str)}, path)

    @classmethod
    def load(cls, path: str | Path) -> Seed:
        """Read a file written by :meth:`save`."""
        import torch

        d = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(d, dict) or d.get("format") != SEED_FORMAT:
            raise SeedError(f"{path} is not a fnatune seed file")
        return cls(d["name"], Arch.from_dict(json.loads(d["arch"])), d["state_dict"], d["classifier"], d["source"],
                   json.loads(d.get("meta") or "{}"))


SEED_FORMAT = "fnatune-seed"
_SEEDS: Registry[SeedAdapter] = Registry(
    "seed", loader=lambda: (import_submodules("fnatune.seeds"), load_plugins("fnatune.seeds", _SEEDS)))


def register_seed(adapter: SeedAdapter) -> SeedAdapter:
    """Register a seed family adapter under ``adapter.name``."""
    _SEEDS.register(adapter.name, doc=adapter.description)(lambda: adapter)
    return adapter


def list_seeds() -> list[str]:
    return _SEEDS.names()


def describe_seed(name: str) -> str:
    """One-line description of seed family ``name``."""
    return _SEEDS.doc(name)


def get_seed_adapter(name: str) -> SeedAdapter:
    return _SEEDS.create(name)


def load_seed(name: str, weights: str | None = None, **model_kwargs: Any) -> Seed:
    """Load seed ``name`` with ``weights`` (None, a checkpoint path or a torchvision weights name)."""
    adapter = get_seed_adapter(name)
    try:
        reference = adapter.build(**model_kwargs)
    except SeedError:
        raise
    except (TypeError, ValueError) as e:
        raise SeedError(_option_problem(name, model_kwargs, e)) from None
    layout = adapter.layout(reference)
    ref_sd = reference.state_dict()
    optional = frozenset(layout.classifier_keys.values())
    if weights is None:
        sd, source = ref_sd, f"random init ({name})"
    elif looks_like_path(str(weights)):
        sd, source = read_checkpoint(weights), f"checkpoint '{weights}'"
    else:
        if adapter.torchvision_model is None:
            raise SeedError(f"seed '{name}' has no torchvision weights; pass a checkpoint path")
        sd, source = fetch_torchvision_weights(adapter.torchvision_model, str(weights))
    check_state_dict(ref_sd, sd, name, source, optional)
    state = {ours: sd[theirs] for ours, theirs in layout.key_map.items()}
    classifier = None
    if layout.classifier_keys and all(
        k in sd and sd[k].shape == ref_sd[k].shape for k in layout.classifier_keys.values()
    ):
        classifier = {sfx: sd[k] for sfx, k in layout.classifier_keys.items()}
    meta = {"model_kwargs": model_kwargs, **(adapter.meta(reference) if adapter.meta else {})}
    return Seed(name, layout.arch, {k: v.detach().clone() for k, v in state.items()}, classifier, source, meta=meta)


def _option_problem(name: str, options: dict[str, Any], error: Exception) -> str:
    """Say which seed option the reference model refused: an option it does not have, or a value of the wrong
    kind (``width_mult=wide`` reaches torchvision as text, whose error is about string arithmetic)."""
    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if unknown:
        return f"seed '{name}' has no option '{unknown.group(1)}' ({describe_seed(name)})"
    texts = {k: v for k, v in options.items() if isinstance(v, str)}
    if texts:
        given = ", ".join(f"{k}={v!r}" for k, v in texts.items())
        return (f"seed '{name}': option {given} is text, where the model expects a number or a flag "
                f"(e.g. width_mult=0.75)")
    given = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"seed '{name}' refused its options {given}: {error}"


def seed_from_net(name: str, net: nn.Module, source: str = "trained") -> Seed:
    """Wrap one of our own ChildNets (e.g. a seed pretrained by fnatune) as a :class:`Seed`."""
    from fnatune.nets import ChildNet

    if not isinstance(net, ChildNet):
        raise SeedError(f"seed_from_net needs a ChildNet, got {type(net).__name__}")
    return Seed(name, net.arch, {k: v.detach().clone() for k, v in net.state_dict().items()}, None, source)


__all__ = ["SEED_FORMAT", "Seed", "SeedAdapter", "describe_seed", "get_seed_adapter", "list_seeds", "load_seed",
           "register_seed", "seed_from_net"]
