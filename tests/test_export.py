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


def _ill_conditioned(layers: int = 4, seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU6 layers whose BN running variances are tiny, as a net's are after a few fine-tune steps from
    a random init: each BN multiplies float32 rounding by up to 1/sqrt(eps) (~300)."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6()]
    net = nn.Sequential(*mods).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(16, generator=g) * 1e-6)
                m.running_mean.normal_(0, 0.1, generator=g)
    return net


def test_a_net_that_amplifies_rounding_passes_when_both_runtimes_are_equally_far_from_float64(tmp_path: Path) -> None:
    """The smoke run of issue 26 (SSDLite, random seed, 3 fine-tune steps) failed with "differs from PyTorch by
    0.104 (> 0.0001 x 6)": its outputs are ReLU6-bounded and its BNs amplify rounding, so float32 PyTorch itself is
    that far from the exact result; onnxruntime is no farther."""
    info = export_onnx(_ill_conditioned(), tmp_path / "ill.onnx", (32, 32))
    assert info["onnxruntime_max_abs_diff"] > 1e-4 * 6  # what the old check refused
    assert info["pytorch_error_vs_float64"] > 1e-4 * 6  # ... because PyTorch's own float32 result is as far off
    assert info["onnxruntime_error_vs_float64"] < 16 * info["pytorch_error_vs_float64"]


@pytest.mark.parametrize("net", [_net(1.0), _ill_conditioned()], ids=["plain", "ill-conditioned"])
def test_a_graph_that_computes_something_else_still_fails(net: nn.Module, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A real defect in the exported graph (one conv's weights off by a third, as a wrong layout or a dropped
    scale would leave them) fails the check, for a well-conditioned net and for one that amplifies rounding."""
    import onnx
    from onnx import numpy_helper

    real_export = torch.onnx.export

    def broken_export(model, args, f, **kwargs):  # type: ignore[no-untyped-def]
        real_export(model, args, f, **kwargs)
        graph = onnx.load(f)
        init = next(i for i in graph.graph.initializer if numpy_helper.to_array(i).ndim == 4)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.33, init.name))
        onnx.save(graph, f)

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(FnatuneError, match=r"onnxruntime is .* off the float64 result, more than .* and more than 16 x "
                                           r"PyTorch's own float32 error"):
        export_onnx(net, tmp_path / "broken.onnx", (32, 32))
