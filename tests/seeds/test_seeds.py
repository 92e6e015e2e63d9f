"""Seed adapters: builder options, checkpoint loading and its errors (every registered seed's identity with its
source library is in tests/test_conformance.py)."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from fnatune.errors import MissingPathError, SeedError, UnknownNameError
from fnatune.heads.cls import ClassifierNet
from fnatune.seeds import load_seed
from tests.conftest import make_checkpoint, randomize_bn


def _tv_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.features(x) if hasattr(model, "features") else model.layers(x)


@pytest.mark.parametrize("builder,kwargs", [
    ("mobilenet_v2", {"width_mult": 0.75}),
    ("mnasnet", {"alpha": 1.2}),
])
def test_seed_with_builder_options_reproduces_torchvision_features_and_logits(tmp_path: Path, builder: str, kwargs: dict) -> None:
    model, ckpt = make_checkpoint(builder, tmp_path / "seed.pt", seed=3, **kwargs)
    seed = load_seed(builder, weights=str(ckpt), **kwargs)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        ours = seed.build()(x)[-1]
        theirs = _tv_features(model, x)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= 1e-5
        clf = ClassifierNet.from_seed(seed).eval()
        assert (clf(x) - model(x)).abs().max().item() <= 1e-5


def test_mnasnet_layout_is_the_nas_found_one(mnasnet_seed) -> None:  # type: ignore[no-untyped-def]
    assert mnasnet_seed.arch.block_string() == (
        "k3_e1 | k3_e3 k3_e3 k3_e3 | k5_e3 k5_e3 k5_e3 | k5_e6 k5_e6 k5_e6 | k3_e6 k3_e6 | "
        "k5_e6 k5_e6 k5_e6 k5_e6 | k3_e6")
    assert mnasnet_seed.arch.skeleton.act == "relu"
    assert [s.out_channels for s in mnasnet_seed.arch.skeleton.stages] == [16, 24, 32, 64, 72, 144, 240]


def test_mobilenet_layout_matches_fna_seed(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    arch = mbv2_seed.arch
    assert arch.depths == (1, 2, 3, 4, 3, 3, 1)  # FNA_SPEC §2 seed_num_layers without stem and 1280 conv
    assert [(s.out_channels, s.stride) for s in arch.skeleton.stages] == [
        (16, 1), (24, 2), (32, 2), (64, 2), (96, 1), (160, 2), (320, 1)]
    assert arch.skeleton.tail_channels == 1280 and arch.skeleton.act == "relu6"


def test_checkpoint_wrappers_and_ddp_prefix(tmp_path: Path, mbv2_checkpoint) -> None:  # type: ignore[no-untyped-def]
    model, _ = mbv2_checkpoint
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    path = tmp_path / "wrapped.pth"
    torch.save(wrapped, path)
    seed = load_seed("mobilenet_v2", weights=str(path))
    assert torch.equal(seed.state_dict["stem.conv.weight"], model.state_dict()["features.0.0.weight"])


def test_other_family_checkpoint_names_first_mismatch(mnasnet_checkpoint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SeedError, match=r"parameter 'features\.0\.0\.weight' .* is missing"):
        load_seed("mobilenet_v2", weights=str(mnasnet_checkpoint[1]))


def test_wrong_width_checkpoint_names_parameter_and_both_shapes(tmp_path: Path) -> None:
    _, path = make_checkpoint("mobilenet_v2", tmp_path / "half.pt", width_mult=0.5)
    with pytest.raises(SeedError) as e:
        load_seed("mobilenet_v2", weights=str(path))
    msg = str(e.value)
    assert "features.0.0.weight" in msg and "(16, 3, 3, 3)" in msg and "(32, 3, 3, 3)" in msg


def test_other_classifier_is_dropped_not_an_error(tmp_path: Path) -> None:
    _, path = make_checkpoint("mobilenet_v2", tmp_path / "c10.pt", num_classes=10)
    seed = load_seed("mobilenet_v2", weights=str(path))
    assert seed.classifier is None and "tail.conv.weight" in seed.state_dict


def test_missing_and_corrupt_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(MissingPathError, match="does not exist"):
        load_seed("mobilenet_v2", weights=str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SeedError, match="cannot read seed checkpoint"):
        load_seed("mobilenet_v2", weights=str(bad))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(SeedError, match="does not contain a state dict"):
        load_seed("mobilenet_v2", weights=str(tmp_path / "list.pt"))


def test_unknown_seed_and_weights_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'mobilenet_v2'"):
        load_seed("mobilenetv2")
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        load_seed("mobilenet_v2", weights="IMAGENET_V9")


def test_torchvision_weights_name_offline_gives_actionable_error(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    try:
        with pytest.raises(SeedError) as e:
            load_seed("mobilenet_v2", weights="IMAGENET1K_V1")
    finally:
        torch.hub.set_dir(old)
    msg = str(e.value)
    assert "offline" in msg and "--weights PATH" in msg and "mobilenet_v2-b0353104.pth" in msg


def test_torchvision_weights_name_uses_hub_cache(tmp_path: Path) -> None:
    """The real torchvision path, fed from torch's hub cache instead of the internet."""
    url = tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url
    model = randomize_bn(tvm.mobilenet_v2(weights=None), seed=5)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(model.state_dict(), cache / Path(url).name)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        seed = load_seed("mobilenet_v2", weights="IMAGENET1K_V1")
    finally:
        torch.hub.set_dir(old)
    assert seed.source == "torchvision MobileNet_V2_Weights.IMAGENET1K_V1"
    assert torch.equal(seed.state_dict["tail.bn.running_var"], model.state_dict()["features.18.1.running_var"])
