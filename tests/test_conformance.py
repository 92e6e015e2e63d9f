"""Conformance suites over the registries (the way timm tests every registered model): every registered
space, seed, block family and task is tested here without editing this file.

* every space builds, remaps from every seed that fits it (and a seed that does not fit is a clear error),
  runs forward and backward in both modes, derives, and exports to ONNX at 64 px;
* every candidate op of every space: its family names it back, draws it, and counts its MAdds exactly as
  the counter measures them;
* every seed reproduces its source library's features (and logits) and remaps into its own arch exactly;
* every task's tiny model runs one loss step, one search step in both modes and one evaluation.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

from fnatune.arch import Arch
from fnatune.blocks import family_of, get_family, parse_op
from fnatune.cost import count_madds
from fnatune.errors import ArchError, RemapError, SeedError
from fnatune.nets import ChildNet, SuperNet
from fnatune.remap import fit_problem, remap
from fnatune.seeds import Seed, get_seed_adapter, list_seeds, load_seed
from fnatune.space import get_space, list_spaces, load_arch
from fnatune.tasks import get_task, list_tasks
from tests.conftest import randomize_bn

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)
# Entries this big run in the slow lane (CI runs both): a super net of 100M+ parameters (the ResNet spaces hold
# nine candidate blocks per layer) takes tens of seconds to build, remap and train on two cores.
BIG_SEED, BIG_SUPERNET = 50e6, 100e6


def _meta_params(build) -> int:  # type: ignore[no-untyped-def]
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def _lane(value: str, params: float, limit: float):  # type: ignore[no-untyped-def]
    return pytest.param(value, marks=[pytest.mark.slow, pytest.mark.timeout(900)] if params > limit else [])


def _seed_case(name: str):  # type: ignore[no-untyped-def]
    try:
        return _lane(name, _meta_params(get_seed_adapter(name).build), BIG_SEED)
    except SeedError as e:  # an optional extra's seed (timm) where the extra is not installed
        return pytest.param(name, marks=pytest.mark.skip(reason=str(e)))


SEED_CASES = [_seed_case(n) for n in list_seeds()]
SPACE_CASES = [_lane(n, _meta_params(lambda n=n: SuperNet(get_space(n))), BIG_SUPERNET) for n in list_spaces()]


def _layout_only(name: str) -> Seed:
    """A seed's name and arch without its weights (its model built on the meta device)."""
    adapter = get_seed_adapter(name)
    with torch.device("meta"):
        return Seed(name, adapter.layout(adapter.build()).arch, {})


@lru_cache(maxsize=1)
def _seed(name: str):  # type: ignore[no-untyped-def]
    """A registered seed at random init with perturbed BN statistics (so BN mapping errors show)."""
    torch.manual_seed(0)
    seed = load_seed(name)
    net = randomize_bn(seed.build(), seed=1)
    seed.state_dict = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return seed


# ------------------------------------------------------------------------------------------ spaces x seeds
# the seed is the outer loop (pytest varies the upper decorator fastest), so `_seed` builds each seed once
@pytest.mark.parametrize("space_name", list_spaces())
@pytest.mark.parametrize("seed_name", SEED_CASES)
def test_every_space_remaps_from_every_seed_that_fits(space_name: str, seed_name: str) -> None:
    """Into a sampled arch of the space and into the seed's own layout there (the super net's remap, the same
    rules in a loop over candidates, runs once per space below)."""
    space, seed = get_space(space_name), _seed(seed_name)
    problem = fit_problem(seed, space)
    if problem is not None:
        with pytest.raises(RemapError) as e:
            remap(seed, space)
        assert seed_name in str(e.value) and space_name in str(e.value)
        return
    archs = [space.sample(0)]
    try:
        archs.append(space.project(seed.arch))  # the seed's own layout, where its ops are candidates of the space
    except ArchError:
        pass
    for arch in archs:
        child, report = remap(seed, arch)
        assert [r.target for r in report.records] == list(child.state_dict())
        assert report.counts().get("left_at_init", 0) < len(report.records) // 2  # the seed fills most tensors


@pytest.mark.parametrize("space_name", SPACE_CASES)
def test_every_space_trains_derives_and_exports(space_name: str, tmp_path: Path) -> None:
    from fnatune.export import export_onnx

    space = get_space(space_name)
    fitting = [n for n in list_seeds() if fit_problem(_layout_only(n), space) is None]
    assert fitting, f"no registered seed fits space '{space_name}'"
    seed = _seed(min(fitting, key=lambda n: _meta_params(get_seed_adapter(n).build)))  # the smallest one
    net, report = remap(seed, space)
    assert [r.target for r in report.records] == [k for k in net.state_dict() if not k.startswith("alphas.")]
    net.train()
    x = torch.randn(2, 3, *SIZE)

    path = net.sample_path(torch.Generator().manual_seed(0), uniform=True)
    outs = net(x, indices=path)
    assert [o.shape[1] for o in outs] == [f.channels for f in net.feature_info]
    sum(o.square().mean() for o in outs).backward()
    assert all(a.grad is None for a in net.arch_parameters())  # weight step: alpha untouched
    assert net.stem.conv.weight.grad is not None
    net.zero_grad(set_to_none=True)

    sum(o.square().mean() for o in net(x)).backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in net.arch_parameters())

    arch = net.derive()
    space.validate(arch)
    assert Arch.from_dict(arch.to_dict()) == arch
    assert load_arch({"space": space_name, "blocks": arch.block_string()}) == arch
    child, _ = remap(seed, arch)
    out = child.train()(x)
    sum(o.mean() for o in out).backward()
    info = export_onnx(child.eval(), tmp_path / "child.onnx", SIZE, arch.skeleton.in_channels)
    assert info["onnxruntime_max_abs_diff"] < 1e-4 and len(info["outputs"]) == len(space.taps)


# ------------------------------------------------------------------------------------------ families
def _candidate_ops(space_name: str) -> list[tuple[str, int, int, int, int, tuple[int, int]]]:
    """Every distinct (op, c_in, c_out, stride, dilation, input size) of a space at a 64 px input."""
    from fnatune.layers import same_out

    space = get_space(space_name)
    sk = space.skeleton
    hw = (same_out(SIZE[0], sk.stem_stride), same_out(SIZE[1], sk.stem_stride))
    seen = []
    for s, st in enumerate(space.stages):
        for l in range(st.layers):
            c_in, c_out, stride = sk.layer_io(s, l)
            for op in space.candidates(s, l):
                if op != "skip" and (op, c_in, c_out, stride, st.dilation, hw) not in seen:
                    seen.append((op, c_in, c_out, stride, st.dilation, hw))
            hw = (same_out(hw[0], stride), same_out(hw[1], stride))
    return seen


@pytest.mark.parametrize("space_name", list_spaces())
def test_every_candidate_op_is_named_drawn_and_counted_by_its_family(space_name: str) -> None:
    from fnatune.blocks import build_op

    for op, c_in, c_out, stride, dilation, hw in _candidate_ops(space_name):
        spec = parse_op(op)
        fam = family_of(op)
        assert spec is not None and fam is get_family(spec.family) and spec.name == op
        module = build_op(op, c_in, c_out, stride, dilation)
        assert family_of(module) is fam and module.spec == spec  # type: ignore[union-attr]
        glyph = fam.glyph(spec)
        assert 0 < glyph.height <= 1.25 and glyph.colour and glyph.label
        measured = count_madds(module, hw, in_channels=c_in)
        assert fam.madds(spec, c_in, c_out, stride, dilation, hw) == measured, (op, c_in, c_out, stride, hw)


# ------------------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("seed_name", SEED_CASES)
def test_every_seed_computes_what_its_source_library_computes(seed_name: str, tmp_path: Path) -> None:
    from fnatune.heads.cls import ClassifierNet

    adapter = get_seed_adapter(seed_name)
    torch.manual_seed(3)
    reference = randomize_bn(adapter.build(), seed=3).eval()
    ckpt = tmp_path / "seed.pt"
    torch.save(reference.state_dict(), ckpt)
    seed = load_seed(seed_name, weights=str(ckpt))
    x = torch.randn(2, 3, 72, 64)
    with torch.no_grad():
        ours, theirs = seed.build()(x)[-1], adapter.features(reference, x)
        assert ours.shape == theirs.shape and (ours - theirs).abs().max().item() <= 1e-5
        if seed.classifier is not None:
            assert (ClassifierNet.from_seed(seed).eval()(x) - reference(x)).abs().max().item() <= 1e-5
        child, report = remap(seed, seed.arch)
        assert report.counts() == {"copied": len(child.state_dict())}
        assert all(torch.equal(a, b) for a, b in zip(child.eval()(x), seed.build()(x)))


# ------------------------------------------------------------------------------------------ tasks
@pytest.mark.parametrize("task_name,lib", [pytest.param(t, b, marks=[pytest.mark.mm] if b == "mm" else [])
                                            for t in list_tasks() for b in get_task(t).backends])
def test_every_task_trains_searches_and_evaluates_its_tiny_model(task_name: str, lib: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On every backend the task runs on."""
    from fnatune.config import apply_overrides, load_raw, validate
    from fnatune.data import BatchStream

    task = get_task(task_name)
    if not task.available(lib):
        pytest.skip(f"task {task_name} on backend {lib} needs {', '.join(task.requires(lib))}")
    assert task.tiny_pipeline, f"task {task_name} names no tiny pipeline"
    monkeypatch.chdir(tmp_path)
    raw = apply_overrides(load_raw(ROOT / task.tiny_pipeline), {**task.smoke, "data.root": str(tmp_path / "data"),
                                                                 "backend": lib})
    cfg = validate(raw, task.tiny_pipeline)
    backend = task.backend_for(cfg)
    assert backend.prepare()["train_images"] > 0
    space = get_space(cfg.space)
    arch = space.first_arch()
    torch.manual_seed(0)

    model = backend.model(dict(type="FNABackbone", arch=arch.to_dict()), arch, "finetune")
    loss_fn = backend.loss_fn(model.train())
    loss = loss_fn(BatchStream(backend.train_set(), cfg.finetune.batch_size, backend.collate).next())
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())

    sup_model = backend.model(dict(type="FNASuperBackbone", space=cfg.space), arch, "search")
    supernet = sup_model.backbone.net
    arch_set, weight_set = backend.search_sets()
    for mode, ds in (("path", weight_set), ("mixed", arch_set)):
        if mode == "path":
            supernet.use_path(supernet.sample_path(torch.Generator().manual_seed(0), uniform=True))
        else:
            supernet.use_mixed(cfg.search.temperature)
        loss = backend.loss_fn(sup_model.train())(BatchStream(ds, cfg.search.batch_size, backend.collate).next())
        loss.backward()
        assert torch.isfinite(loss)
    assert all(a.grad is not None for a in supernet.arch_parameters())

    metrics = backend.evaluate(model, backend.val_set())
    assert task.metric in metrics and all(0.0 <= v <= 100.0 for v in metrics.values())
    cost = backend.whole_cost(arch)
    assert cost["params"] > sum(p.numel() for p in ChildNet(arch).parameters()) and cost["madds_paper_resolution"] > 0
