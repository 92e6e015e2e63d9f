"""Reading seed weights: local checkpoints (safely) and torchvision weight names (when online).

Checkpoints are loaded with ``weights_only=True``; common wrappers (``{"state_dict": ...}``,
``{"model": ...}``) and DDP's ``module.`` prefix are undone. Every failure names the file and what was
expected.
"""
from __future__ import annotations

import urllib.error
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from fnatune.errors import MissingPathError, SeedError, UnknownNameError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt", ".bin", ".tar", ".safetensors")


def looks_like_path(weights: str) -> bool:
    return ("/" in weights or "\\" in weights or weights.endswith(_CHECKPOINT_SUFFIXES)
            or Path(weights).exists())


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` state dict from a checkpoint file."""
    p = Path(path)
    if not p.is_file():
        raise MissingPathError(f"seed checkpoint '{p}' does not exist")
    if p.suffix == ".safetensors":  # timm's and the Hub's format: tensors only, nothing to unpickle
        return _read_safetensors(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SeedError(
            f"cannot read seed checkpoint '{p}': {first}. fnatune loads checkpoints with weights_only=True, so "
            "the file must hold tensors in plain containers (save with torch.save(model.state_dict(), path))."
        ) from None
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and not any(isinstance(v, Tensor) for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise SeedError(f"seed checkpoint '{p}' does not contain a state dict (a mapping of names to tensors)")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _read_safetensors(p: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise SeedError(f"seed checkpoint '{p}' is a .safetensors file, which needs the safetensors package "
                        "(pip install safetensors, or the timm extra)") from None
    try:
        return dict(load_file(str(p), device="cpu"))
    except (SafetensorError, OSError, ValueError) as e:
        raise SeedError(f"cannot read seed checkpoint '{p}': {str(e).strip().splitlines()[0]}") from None


def check_state_dict(
    reference: Mapping[str, Tensor], candidate: Mapping[str, Tensor], seed_name: str, source: str,
    optional: frozenset[str] = frozenset(),
) -> None:
    """Raise :class:`SeedError` at the first tensor of ``candidate`` that does not match ``reference``.

    Keys in ``optional`` (the classifier) may be absent or differently shaped; the caller drops them.
    """
    for key, ref in reference.items():
        if key in optional:
            continue
        if key not in candidate:
            extra = next((k for k in candidate if k not in reference), None)
            hint = f"; the checkpoint has e.g. '{extra}' instead" if extra else ""
            raise SeedError(f"{source} does not match seed '{seed_name}': parameter '{key}' "
                            f"(shape {tuple(ref.shape)}) is missing{hint}. Is it a checkpoint of another network?")
        got = candidate[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise SeedError(f"{source} does not match seed '{seed_name}': parameter '{key}' has shape "
                            f"{tuple(got.shape)} in the checkpoint, but the seed expects {tuple(ref.shape)}")
    extra = [k for k in candidate if k not in reference]
    if extra:
        raise SeedError(f"{source} does not match seed '{seed_name}': unexpected parameter '{extra[0]}' "
                        f"(shape {tuple(candidate[extra[0]].shape)}) and {len(extra) - 1} more")


def fetch_torchvision_weights(model_name: str, weights: str) -> tuple[dict[str, Tensor], str]:
    """Download (or read from torch's hub cache) torchvision's weights ``weights`` of ``model_name``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(model_name)
    member = weights.split(".")[-1]
    names = [w.name for w in enum]
    try:
        w = enum[member] if member != "DEFAULT" else enum.DEFAULT  # type: ignore[attr-defined]
    except KeyError:
        raise UnknownNameError(
            f"unknown torchvision weights '{weights}' for {model_name}; known: {', '.join(names + ['DEFAULT'])}, "
            "or pass a path to a local checkpoint"
        ) from None
    try:
        sd = w.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError, RuntimeError, ConnectionError) as e:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        raise SeedError(
            f"could not fetch torchvision weights {type(w).__name__}.{w.name} from {w.url} "
            f"({type(e).__name__}: {e}). This machine may be offline. Download that file elsewhere and either "
            f"pass it with --weights PATH, or put it at {cache}, where torchvision looks first."
        ) from None
    return dict(sd), f"torchvision {type(w).__name__}.{w.name}"
