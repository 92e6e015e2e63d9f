"""ONNX export of a derived backbone, checked against PyTorch with onnxruntime.

Uses the TorchScript-based exporter (``dynamo=False``): it needs no extra package and handles our
static MBConv graphs; the dynamo exporter would add ``onnxscript`` as a dependency for no gain here.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fnatune.errors import FnatuneError


class _Outputs(nn.Module):
    """Tuple outputs (ONNX graphs have a fixed list of outputs, not a Python list)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net(x))


def export_onnx(net: nn.Module, path: str | Path, input_size: Sequence[int], in_channels: int = 3, opset: int = 17,
                check: bool = True, atol: float = 1e-4, rounding_factor: float = 16.0) -> dict[str, Any]:
    """Export ``net`` (eval mode, batch 1) to ``path``; with ``check``, run it in onnxruntime and compare.

    Like is compared with like: both float32 runtimes are measured against the same net evaluated in float64.
    The export passes when onnxruntime's error is within ``atol`` times the outputs' largest magnitude (at least
    1), or within ``rounding_factor`` times PyTorch's own float32 error on the same input. The second bound is
    for nets that amplify rounding (an untrained net whose BN variances are tiny after a few steps: its float32
    outputs disagree with the exact ones by far more than 1e-4 in any runtime, and onnxruntime's fused kernels
    round in another order); a graph that computes something else is off by the outputs' own size and fails both.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _Outputs(net).eval()
    x = torch.randn(1, in_channels, int(input_size[0]), int(input_size[1]), generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=[f"feature{i}" for i in range(len(ref))])
    tmp.replace(path)
    info: dict[str, Any] = {"path": str(path), "opset": opset, "input": [1, in_channels, *map(int, input_size)],
                            "outputs": [list(r.shape) for r in ref]}
    if check:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise FnatuneError("onnxruntime is needed to check the export: pip install onnxruntime") from e
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"image": x.numpy()})
        exact = _exact_outputs(model, x)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
        ort_err = max(float(np.abs(a - b).max()) for a, b in zip(got, exact))
        torch_err = max(float(np.abs(a - b).max()) for a, b in zip(ref, exact))
        scale = max([1.0] + [float(np.abs(r).max()) for r in ref])
        info.update(onnxruntime_max_abs_diff=diff, onnxruntime_max_rel_diff=diff / scale,
                    onnxruntime_error_vs_float64=ort_err, pytorch_error_vs_float64=torch_err)
        if ort_err > max(atol * scale, rounding_factor * torch_err):
            raise FnatuneError(
                f"ONNX export of {path} differs from PyTorch by {diff:.3g}: onnxruntime is {ort_err:.3g} off the "
                f"float64 result, more than {atol} x the largest output magnitude ({scale:.3g}) and more than "
                f"{rounding_factor:g} x PyTorch's own float32 error ({torch_err:.3g})")
    return info


def _exact_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """``model``'s outputs computed in float64 on a copy (the reference both float32 runtimes are measured by)."""
    import copy

    with torch.no_grad():
        return [t.numpy() for t in copy.deepcopy(model).double()(x.double())]
