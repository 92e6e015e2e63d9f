"""The ONNX export's check against PyTorch: a tolerance that scales with the outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fnatune.errors import FnatuneError
from fnatune.export import export_onnx


def _net(scale: float) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def test_large_outputs_are_compared_relative_to_their_magnitude_and_a_wrong_export_still_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features in the hundreds (a randomly initialised target) differ from onnxruntime's by more than 1e-4 in
    absolute terms and must pass; an export off by 1% of its largest value must not."""
    import onnxruntime as ort

    info = export_onnx(_net(100.0), tmp_path / "big.onnx", (16, 16))
    assert info["onnxruntime_max_abs_diff"] > 1e-4  # the old absolute check refused this correct export
    assert info["onnxruntime_max_rel_diff"] < 1e-5
    real_run = ort.InferenceSession.run

    def off_by_a_percent(self, names, feeds):  # type: ignore[no-untyped-def]
        return [o + 0.01 * np.abs(o).max() for o in real_run(self, names, feeds)]

    monkeypatch.setattr(ort.InferenceSession, "run", off_by_a_percent)
    with pytest.raises(FnatuneError, match=r"differs from PyTorch by .* x the largest output magnitude"):
        export_onnx(_net(100.0), tmp_path / "wrong.onnx", (16, 16))
