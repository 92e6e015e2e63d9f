"""Latency look-up tables: every candidate op timed on the current device at its real input shape.

FNA's cost term is a MAdds table (FNA_SPEC §5.3); the maintainer's advice for latency-aware search is
to swap in a latency table with the same formula [I#12]. :class:`LatencyTable` has the interface of
:class:`~fnatune.cost.MAddsTable` (``expected``, ``of_indices``, ``of_arch``, ``summary``), in
milliseconds, so the search accepts either.

Each op is run alone on a random tensor of the shape it sees inside the super net at the task
resolution (found with one meta forward): warm-up runs, then the median of ``repeats`` synchronised
timings. Tables are cached as JSON keyed by device name, torch version, dtype, batch, input size and
the space's fingerprint, so a second build on the same machine is a file read.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fnatune.cost import CostTable
from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_cache_dir() -> Path:
    return Path(os.environ.get("FNATUNE_CACHE", Path.home() / ".cache" / "fnatune")) / "lut"


def device_name(device: str | torch.device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model or platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


@dataclass
class LatencyTable(CostTable):
    """Per searchable layer, per candidate latency (ms) of a super net's ops at one input size."""

    input_size: tuple[int, int]
    positions: list[tuple[int, int]]
    candidates: list[tuple[str, ...]]
    ms: list[list[float]]
    fixed_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    unit = "ms"

    def rows(self) -> list[Tensor]:
        return [torch.tensor(row, dtype=torch.float64) for row in self.ms]

    def of_indices(self, indices: Sequence[int]) -> float:
        return float(sum(row[i] for row, i in zip(self.ms, indices)))

    def summary(self) -> dict[str, float]:
        return {"min": sum(min(r) for r in self.ms), "max": sum(max(r) for r in self.ms),
                "uniform": sum(sum(r) / len(r) for r in self.ms), "fixed": self.fixed_ms}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "latency", "unit": "ms", "input_size": list(self.input_size),
            "layers": [{"stage": s, "layer": l, "candidates": dict(zip(c, m))}
                       for (s, l), c, m in zip(self.positions, self.candidates, self.ms)],
            "fixed_ms": self.fixed_ms, "summary_ms": self.summary(), "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Any) -> LatencyTable:
        if not isinstance(d, dict) or d.get("kind") != "latency":
            raise FnatuneError("not a latency table (expected a JSON object with kind: latency, as "
                               "`fnatune lut build` writes)")
        try:
            layers = d["layers"]
            return cls(tuple(d["input_size"]), [(x["stage"], x["layer"]) for x in layers],  # type: ignore[arg-type]
                       [tuple(x["candidates"]) for x in layers], [list(x["candidates"].values()) for x in layers],
                       float(d["fixed_ms"]), dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FnatuneError(f"a latency table without the fields `fnatune lut build` writes ({type(e).__name__}: "
                               f"{e}); build it again") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """A table ``fnatune lut build`` wrote, or one clear error naming the file."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise FnatuneError(f"{p}: not a latency table: not valid JSON ({' '.join(str(e).split())[:100]}); "
                               "build one with `fnatune lut build`") from None
        except OSError as e:
            raise FnatuneError(f"{p}: cannot be read ({e.strerror or e})") from None
        try:
            return cls.from_dict(data)
        except FnatuneError as e:
            raise FnatuneError(f"{p}: {e}") from None


def _layer_input_shapes(supernet: nn.Module, size: Sequence[int], batch: int) -> dict[nn.Module, tuple[int, ...]]:
    """Input shape of every stage layer, the stem and the tail, from one meta forward.

    Layers are not always entered through ``__call__`` (mixed layers and expansion taps are walked
    directly), so the hook sits on each unit's first convolution, which always sees the unit's input.
    """
    from fnatune.cost import meta_forward

    shapes: dict[nn.Module, tuple[int, ...]] = {}
    units = [layer for stage in supernet.stages for layer in stage]  # type: ignore[attr-defined]
    units += [m for m in (getattr(supernet, "stem", None), getattr(supernet, "tail", None)) if m is not None]
    handles = []
    for unit in units:
        conv = next((m for m in unit.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:  # a fixed skip: nothing to time
            continue

        def hook(mod: nn.Module, inp: tuple[Tensor, ...], unit: nn.Module = unit) -> None:
            shapes.setdefault(unit, (batch, *tuple(inp[0].shape[1:])))

        handles.append(conv.register_forward_pre_hook(hook))
    try:
        meta_forward(supernet, size, supernet.skeleton.in_channels)  # type: ignore[attr-defined]
    finally:
        for h in handles:
            h.remove()
    return shapes


def time_module(module: nn.Module, shape: Sequence[int], device: torch.device, dtype: torch.dtype,
                warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time (ms) of ``module`` on a random input of ``shape``: eval mode, no grad, synced."""
    module = module.to(device=device, dtype=dtype).eval()
    x = torch.randn(*shape, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            module(x)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def cache_key(supernet: nn.Module, size: Sequence[int], device: str, dtype: str, batch: int) -> dict[str, Any]:
    space = supernet.space  # type: ignore[attr-defined]
    fingerprint = hashlib.sha1(repr((space.stages, space.stem_channels, space.tail_channels, space.act,
                                     space.taps)).encode()).hexdigest()[:16]
    return {"space": space.name, "space_fingerprint": fingerprint, "device": device_name(device),
            "torch": torch.__version__, "dtype": dtype, "batch": batch, "input_size": [int(size[0]), int(size[1])]}


def latency_table(supernet: nn.Module, input_size: Sequence[int] | None = None, device: str = "cpu",
                  dtype: str = "float32", batch: int = 1, warmup: int = 3, repeats: int = 10,
                  cache_dir: str | Path | None = None, refresh: bool = False) -> LatencyTable:
    """Measure (or read from the cache) the latency table of a SuperNet; see the module docstring."""
    from fnatune.nets import MixedLayer, SuperNet

    if not isinstance(supernet, SuperNet):
        raise TypeError(f"latency_table needs a SuperNet, got {type(supernet).__name__}")
    if dtype not in DTYPES:
        raise FnatuneError(f"unknown dtype '{dtype}'; expected one of {', '.join(DTYPES)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FnatuneError(f"device '{device}' asked for, but CUDA is not available on this machine")
    size = tuple(input_size or supernet.space.input_size)
    key = cache_key(supernet, size, device, dtype, batch)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"{key['space']}-{digest}.json"
    if path.exists() and not refresh:
        table = LatencyTable.load(path)
        table.meta["cache"] = str(path)
        table.meta["cached"] = True
        return table
    shapes = _layer_input_shapes(supernet, size, batch)
    torch_dtype = DTYPES[dtype]
    rows: list[list[float]] = []
    for s, l in supernet.positions:
        layer = supernet.stages[s][l]
        assert isinstance(layer, MixedLayer)
        rows.append([time_module(_copy(op), shapes[layer], dev, torch_dtype, warmup, repeats) for op in layer.candidates])
    fixed = 0.0
    for m, shape in shapes.items():
        if not isinstance(m, MixedLayer):
            fixed += time_module(_copy(m), shape, dev, torch_dtype, warmup, repeats)
    table = LatencyTable((int(size[0]), int(size[1])), list(supernet.positions),
                         [supernet.space.candidates(s, l) for s, l in supernet.positions], rows, fixed,
                         {**key, "warmup": warmup, "repeats": repeats, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    table.save(path)
    table.meta["cache"] = str(path)
    table.meta["cached"] = False
    return table


def _copy(module: nn.Module) -> nn.Module:
    """Time a copy so the super net's own weights never move device or dtype."""
    import copy

    return copy.deepcopy(module)
