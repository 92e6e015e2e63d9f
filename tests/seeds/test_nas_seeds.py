"""NAS-network seeds (issue 24): the MBConv grammar's SE, gate, activation and float-expansion tokens, the SE remap
rule (FNA_SPEC §14.3), torchvision's MobileNetV3-Large and EfficientNet-B0..B3 layouts, and their MAdds beside
torchvision's published figures. Every seed's identity with its source library and its exact self-remap are in
tests/test_conformance.py, which picks the new seeds up from the registry."""
from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from fnatune.blocks import build_op, family_of, parse_op
from fnatune.blocks.mbconv import MBConv, MBConvSpec
from fnatune.cost import count_madds
from fnatune.errors import ArchError, RemapError
from fnatune.layers import make_divisible, same_out
from fnatune.nets import ChildNet
from fnatune.remap import RemapOptions, remap_layer
from fnatune.seeds import list_seeds, load_seed
from tests.conftest import randomize_bn

NEW_SEEDS = ("mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3")


# ------------------------------------------------------------------------------------------ the grammar
@pytest.mark.parametrize("op,spec", [
    ("k3_e6", MBConvSpec(3, 6)),
    ("k5_e6_se0.25", MBConvSpec(5, 6, 0.25)),
    ("k3_e2.3_hswish", MBConvSpec(3, 2.3, act="hswish")),
    ("k5_e3_sem0.25_hsig_relu", MBConvSpec(5, 3, 0.25, True, True, "relu")),
    ("k3_e1_se0.25_silu", MBConvSpec(3, 1, 0.25, act="silu")),
])
def test_op_names_parse_to_their_spec_and_back(op: str, spec: MBConvSpec) -> None:
    assert parse_op(op) == spec and spec.name == op


@pytest.mark.parametrize("op,words", [
    ("k3_e6_foo", ["unknown token 'foo'", "k<kernel>_e<expansion>[_pw][_se<ratio>|_sem<ratio>]"]),
    ("k3_e6_relu_se0.25", ["write it as 'k3_e6_se0.25_relu'"]),
    ("k3_e6_hsig", ["'hsig' needs an SE token"]),
    ("k3_e6_se0.25_se0.5", ["repeats"]),
    ("k3_e6_se1.5", ["SE ratio must be in (0, 1]"]),
    ("k3_e0.5", ["expansion ratio must be >= 1"]),
])
def test_bad_op_names_say_which_token_and_the_grammar(op: str, words: list[str]) -> None:
    with pytest.raises(ArchError) as e:
        parse_op(op)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_tokens_build_the_block_they_name() -> None:
    block = build_op("k5_e3_sem0.25_hsig_relu", 40, 40, act="hswish")
    assert isinstance(block, MBConv) and block.hidden == 120
    assert isinstance(block.expand.act, nn.ReLU) and isinstance(block.dw.act, nn.ReLU)  # type: ignore[union-attr]
    assert block.se is not None and block.se.fc1.out_channels == make_divisible(120 * 0.25, 8) == 32
    assert isinstance(block.se.gate, nn.Hardsigmoid) and isinstance(block.se.act, nn.ReLU)
    eff = build_op("k3_e6_se0.25", 40, 80, stride=2, act="silu")
    assert isinstance(eff.dw.act, nn.SiLU) and eff.se.fc1.out_channels == 10  # type: ignore[union-attr]
    assert isinstance(eff.se.gate, nn.Sigmoid) and isinstance(eff.se.act, nn.SiLU)  # type: ignore[union-attr]
    plain = build_op("k3_e2.3", 80, 80, act="hswish")
    assert plain.hidden == 184 and plain.se is None and isinstance(plain.dw.act, nn.Hardswish)  # type: ignore[union-attr]


@pytest.mark.parametrize("op", ["k5_e3_sem0.25_hsig_relu", "k3_e6_se0.25", "k3_e1_se0.25_silu", "k3_e2.5_hswish"])
@pytest.mark.parametrize("stride", [1, 2])
def test_se_blocks_are_counted_as_the_counter_measures_them(op: str, stride: int) -> None:
    block = build_op(op, 40, 40 if stride == 1 else 48, stride=stride)
    fam, spec = family_of(op), parse_op(op)
    hw = (15, 13)
    assert fam.madds(spec, 40, block.c_out, stride, 1, hw) == count_madds(block, hw, in_channels=40)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ the SE remap rule
def _seed_block(op: str, c_in: int = 40, c_out: int = 40) -> MBConv:
    torch.manual_seed(0)
    block = build_op(op, c_in, c_out, act="hswish")
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_()
    return randomize_bn(block, seed=1).eval()  # type: ignore[return-value]


@pytest.mark.parametrize("width", ["index", "bn_gamma"])
def test_se_follows_the_hidden_index_set_and_keeps_the_leading_reduced_channels(width: str) -> None:
    seed = _seed_block("k5_e6_sem0.25_hsig_relu")             # hidden 240, SE 240 -> 64
    new = build_op("k5_e3_sem0.25_hsig_relu", 40, 40, act="hswish")  # hidden 120, SE 120 -> 32
    remap_layer(seed, new, RemapOptions(width=width))
    # the hidden index set is the one the expand conv got: find each target channel's seed row
    rows = [int(torch.nonzero((seed.expand.conv.weight == w).all(dim=(1, 2, 3)))[0]) for w in new.expand.conv.weight]
    if width == "index":
        assert rows == list(range(120))
    else:
        assert rows == sorted(torch.argsort(seed.expand.bn.weight.abs(), descending=True, stable=True)[:120].tolist())
    idx = torch.tensor(rows)
    assert torch.equal(new.se.fc1.weight, seed.se.fc1.weight[:32][:, idx])
    assert torch.equal(new.se.fc1.bias, seed.se.fc1.bias[:32])
    assert torch.equal(new.se.fc2.weight, seed.se.fc2.weight[idx][:, :32])
    assert torch.equal(new.se.fc2.bias, seed.se.fc2.bias[idx])
    assert torch.equal(new.project.conv.weight, seed.project.conv.weight[:, idx])


def test_new_se_entries_start_at_zero_or_at_the_noise() -> None:
    seed = _seed_block("k3_e3_sem0.25_hsig_relu")              # hidden 120, SE -> 32
    new = build_op("k3_e6_sem0.25_hsig_relu", 40, 40, act="hswish")  # hidden 240, SE -> 64
    records = {r.target: r.action for r in remap_layer(seed, new)}
    assert records["se.fc1.bias"] == records["se.fc2.bias"] == "expanded"
    assert torch.equal(new.se.fc1.weight[:32, :120], seed.se.fc1.weight)
    assert torch.equal(new.se.fc2.bias[:120], seed.se.fc2.bias)
    assert not new.se.fc1.weight[32:].any() and not new.se.fc1.weight[:, 120:].any()
    assert not new.se.fc1.bias[32:].any() and not new.se.fc2.bias[120:].any() and not new.se.fc2.weight[120:].any()
    noisy = build_op("k3_e6_sem0.25_hsig_relu", 40, 40, act="hswish")
    remap_layer(seed, noisy, RemapOptions(noise=True, noise_scale=1e-5))
    assert torch.equal(noisy.se.fc1.weight[:32, :120], seed.se.fc1.weight)
    new_part = noisy.se.fc1.weight[32:]
    assert new_part.abs().max() > 0 and new_part.abs().max() < 1e-4


def test_a_block_of_the_input_based_se_keeps_its_reduced_width_across_expansions() -> None:
    seed = _seed_block("k3_e6_se0.25_silu")
    new = build_op("k5_e3_se0.25_silu", 40, 40, act="hswish")
    remap_layer(seed, new)
    assert new.se.fc1.out_channels == seed.se.fc1.out_channels == 10
    assert torch.equal(new.se.fc1.weight, seed.se.fc1.weight[:, :120])


def test_a_block_is_remapped_only_into_a_block_with_its_se_gate_and_activation() -> None:
    seed = _seed_block("k3_e6_se0.25")
    with pytest.raises(RemapError, match="differ in SE, gate or activation"):
        remap_layer(seed, build_op("k3_e6", 40, 40))


# ------------------------------------------------------------------------------------------ the seeds
def test_the_nas_seeds_are_listed() -> None:
    assert set(NEW_SEEDS) <= set(list_seeds())


def test_mobilenet_v3_large_layout_is_torchvisions_block_table() -> None:
    seed = load_seed("mobilenet_v3_large")
    assert seed.arch.skeleton.act == "hswish" and seed.arch.skeleton.bn_eps == 1e-3
    assert seed.arch.block_string() == (
        "k3_e1_relu | k3_e4_relu k3_e3_relu | k5_e3_sem0.25_hsig_relu k5_e3_sem0.25_hsig_relu k5_e3_sem0.25_hsig_relu"
        " | k3_e6 k3_e2.5 k3_e2.3 k3_e2.3 | k3_e6_sem0.25_hsig k3_e6_sem0.25_hsig"
        " | k5_e6_sem0.25_hsig k5_e6_sem0.25_hsig k5_e6_sem0.25_hsig")
    net = ChildNet(seed.arch)
    widths = [layer.se.fc1.out_channels for stage in net.stages for layer in stage if layer.se is not None]
    assert widths == [24, 32, 32, 120, 168, 168, 240, 240]  # FNA_SPEC §14.2a, MobileNetV3-Large's SE rd column


def test_efficientnet_layout_has_se_everywhere_and_silu() -> None:
    seed = load_seed("efficientnet_b0")
    sk = seed.arch.skeleton
    assert sk.act == "silu" and sk.stem_channels == 32 and sk.tail_channels == 1280
    assert [len(ops) for ops in seed.arch.ops] == [1, 2, 2, 3, 3, 4, 1]
    assert all(op.endswith("_se0.25") for ops in seed.arch.ops for op in ops)
    assert seed.classifier is not None and seed.classifier["weight"].shape == (1000, 1280)
    assert seed.meta["mean"] == (0.485, 0.456, 0.406) and seed.meta["input_size"] == (3, 224, 224)


WEIGHTS = {"mobilenet_v3_large": (tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1, 224),
           "efficientnet_b0": (tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, 224),
           "efficientnet_b1": (tvm.EfficientNet_B1_Weights.IMAGENET1K_V1, 240)}


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_seed_madds_at_its_weights_resolution_match_torchvisions_published_figure(name: str) -> None:
    """Backbone counted on our converted net (SE convs included), classifier on torchvision's own head."""
    weights, size = WEIGHTS[name]
    seed = load_seed(name)
    reference = getattr(tvm, name)(weights=None)
    with torch.device("meta"):
        ours = count_madds(ChildNet(seed.arch.with_taps(["tail"])), (size, size))
    head = sum(m.in_features * m.out_features + m.out_features for m in reference.classifier.modules()
               if isinstance(m, nn.Linear))
    published = weights.meta["_ops"] * 1e9
    assert abs(ours + head - published) / published < 0.01, (ours + head, published)
    # and the blocks' analytic counts (the search's cost table) agree with the counter
    sk, hw = seed.arch.skeleton, (same_out(size, 2), same_out(size, 2))
    c_in = sk.stem_channels
    for s, ops in enumerate(seed.arch.ops):
        for l, op in enumerate(ops):
            stride = sk.stages[s].stride if l == 0 else 1
            block = build_op(op, c_in, sk.stages[s].out_channels, stride, act=sk.act)
            assert family_of(op).madds(parse_op(op), c_in, block.c_out, stride, 1, hw) == count_madds(  # type: ignore[union-attr]
                block, hw, in_channels=c_in), op
            c_in, hw = block.c_out, (same_out(hw[0], stride), same_out(hw[1], stride))


# ------------------------------------------------------------------------------------------ timm
TIMM = ("semnasnet_100", "mobilenetv3_large_100", "efficientnet_b0", "fbnetc_100", "spnasnet_100")


def test_fnatune_and_its_seed_registry_do_not_import_timm() -> None:
    import subprocess
    import sys

    code = ("import sys, fnatune.seeds as s, fnatune.cli; s.list_seeds(); "
            "print('timm' in sys.modules, 'torchvision.models' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"


@pytest.mark.parametrize("model", TIMM)
def test_timm_seeds_are_registered_with_timms_metadata(model: str) -> None:
    pytest.importorskip("timm")
    seed = load_seed(f"timm_{model}")
    assert seed.meta["mean"] == (0.485, 0.456, 0.406) and seed.meta["std"] == (0.229, 0.224, 0.225)
    assert seed.meta["architecture"] == model and seed.meta["input_size"] == (3, 224, 224)
    assert seed.classifier is not None and ("pre.weight" in seed.classifier) == (model == "mobilenetv3_large_100")


def test_timm_mnasnet_a1_has_its_se_stages() -> None:
    pytest.importorskip("timm")
    seed = load_seed("timm_semnasnet_100")
    assert seed.arch.block_string() == (
        "k3_e1 | k3_e6 k3_e6 | k5_e3_se0.25 k5_e3_se0.25 k5_e3_se0.25 | k3_e6 k3_e6 k3_e6 k3_e6"
        " | k3_e6_se0.25 k3_e6_se0.25 | k5_e6_se0.25 k5_e6_se0.25 k5_e6_se0.25 | k3_e6")
    widths = [layer.se.fc1.out_channels for stage in ChildNet(seed.arch).stages for layer in stage if layer.se is not None]
    assert widths == [6, 10, 10, 20, 28, 28, 40, 40]  # FNA_SPEC §14.2b: rd = 0.25 x the block input


def test_timm_fbnet_e1_blocks_keep_their_expand_conv() -> None:
    pytest.importorskip("timm")
    seed = load_seed("timm_fbnetc_100")
    assert seed.arch.ops[0] == ("k3_e1_pw",) and seed.arch.ops[1] == ("k3_e6", "k3_e1_pw", "k3_e1_pw")
    assert ChildNet(seed.arch).stages[0][0].expand is not None


def test_timm_safetensors_checkpoint_loads_and_computes_the_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("semnasnet_100", pretrained=False), seed=2).eval()
    path = tmp_path / "semnasnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    seed = load_seed("timm_semnasnet_100", weights=str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (seed.build()(x)[-1] - model.forward_features(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("model,words", [
    ("mixnet_s", ["block 'blocks.1.0'", "MixedConv2d", "cannot express"]),
    ("tf_efficientnet_b0", ["'conv_stem'", "TF 'same' padding"]),
    ("efficientnetv2_rw_t", ["block 'blocks.0.0' is a ConvBnAct", "block kind fnatune cannot express"]),
    ("resnet18", ["not a timm EfficientNet or MobileNetV3 model"]),
    ("no_such_net", ["timm has no model 'no_such_net'"]),
])
def test_timm_models_fnatune_cannot_express_are_refused_in_one_line(model: str, words: list[str]) -> None:
    pytest.importorskip("timm")
    from fnatune.errors import SeedError

    with pytest.raises(SeedError) as e:
        load_seed("timm", model=model)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)


def test_a_timm_checkpoint_of_another_model_names_the_first_missing_and_unexpected_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    timm = pytest.importorskip("timm")
    from fnatune.errors import SeedError

    path = tmp_path / "b0.pth"
    torch.save(timm.create_model("efficientnet_b0", pretrained=False).state_dict(), path)
    with pytest.raises(SeedError, match=r"does not match seed 'timm_semnasnet_100'.*(missing|shape|unexpected)"):
        load_seed("timm_semnasnet_100", weights=str(path))
