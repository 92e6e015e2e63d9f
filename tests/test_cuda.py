"""CUDA paths (skipped without a GPU; CI has none). Run on a GPU machine with `pytest tests/test_cuda.py`."""
from __future__ import annotations

import pytest
import torch

from fnatune.cost import count_madds, madds_table
from fnatune.nets import SuperNet
from fnatune.remap import remap
from fnatune.space import get_space

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32():  # type: ignore[no-untyped-def]
    """cuDNN convs default to TF32 on Ampere+ (~1e-2 error); compare against the CPU in full fp32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_remap_into_cuda_supernet_matches_cpu(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    space = get_space("mbv2_det")
    torch.manual_seed(0)
    cpu = SuperNet(space)
    torch.manual_seed(0)
    gpu = SuperNet(space).cuda()
    remap(mbv2_seed, cpu)
    _, report = remap(mbv2_seed, gpu)
    assert report.counts()["copied"] > 0
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        assert b.is_cuda and torch.equal(a, b.cpu()), k


def test_cuda_forward_backward_both_modes_and_cost(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    space = get_space("mbv2_ssdlite")
    cpu, _ = remap(mbv2_seed, space)
    gpu, _ = remap(mbv2_seed, SuperNet(space))
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    x = torch.randn(2, 3, 96, 96)
    path = gpu.sample_path(uniform=True)  # alphas live on the GPU
    for kwargs in ({"indices": path}, {"temperature": 0.9}):
        ref = cpu(x, **kwargs)
        out = gpu(x.cuda(), **kwargs)
        for r, o in zip(ref, out):
            assert torch.allclose(r, o.cpu(), atol=1e-3, rtol=1e-3)  # fp32 summation order, 20+ layers
    table = madds_table(gpu, (320, 320))
    cost = table.expected(gpu.arch_parameters(), temperature=0.9)
    assert cost.is_cuda
    cost.backward()
    assert all(a.grad is not None for a in gpu.arch_parameters())
    assert count_madds(gpu, (320, 320)) == count_madds(cpu, (320, 320))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(x.cuda(), indices=path)
    assert all(torch.isfinite(o).all() for o in out)
