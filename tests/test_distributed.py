"""Data-parallel search over Ray Train workers (gloo on CPU): every worker trains rank 0's sampled path,
and alpha and the weights stay identical on all workers while each sees its own shard of the data."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("ray")

from fnatune.distributed import shard
from tests.helpers import tiny_dataset


def _search_worker(config: dict[str, Any]) -> None:
    """One rank: a few warm-up and search epochs of the tiny super net, recording every path it trained."""
    from fnatune.config import DeriveCfg, SearchCfg
    from fnatune.cost import madds_table
    from fnatune.data import BatchStream
    from fnatune.distributed import current
    from fnatune.nets import SuperNet
    from fnatune.search import Searcher
    from tests.helpers import TinySeg, ce_loss, tiny_space

    dp = current()
    assert dp is not None and dp.backend == "gloo"
    torch.manual_seed(0)
    supernet = SuperNet(tiny_space())
    model = TinySeg(supernet)
    ds = shard(tiny_dataset(32), dp.rank, dp.world)
    arch = BatchStream(ds, 2, seed=11 + 100 * dp.rank)
    weight = BatchStream(ds, 2, seed=12 + 100 * dp.rank)
    paths: list[list[int]] = []
    use_path = supernet.use_path
    supernet.use_path = lambda p: (paths.append(list(p)), use_path(p))[1]  # type: ignore[method-assign]
    seen: list[float] = []
    loss = ce_loss(model)
    settings = SearchCfg.model_validate({
        "epochs": 3, "warmup_epochs": 1, "steps_per_epoch": 4, "checkpoint_every": 0, "cost": {"lambda": 0.1},
        "weight_optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 35.0},
        "weight_lr": {"policy": "step", "milestones": [8, 11], "warmup_iters": 500},
        "arch_optim": {"name": "adam", "lr": 0.05, "weight_decay": 0.0, "betas": (0.5, 0.999), "grad_clip": None}})
    searcher = Searcher(model, supernet, lambda b: (seen.append(float(b[0].sum())), loss(b))[1], arch, weight,
                        madds_table(supernet, (32, 32)), settings, Path(config["workdir"]), seed=1, dp=dp)
    searcher.run()
    trained = list(paths)
    # scored derivation: each rank scores on its own shard, the losses are averaged, so all derive one arch
    derivation = searcher.derive(DeriveCfg(method="paths", top_k=3, batches=2))
    torch.save({"alpha": [a.detach().clone() for a in supernet.arch_parameters()], "paths": trained, "seen": seen,
                "params": {k: p.detach().clone() for k, p in model.named_parameters()},
                "derived": derivation.to_dict()}, Path(config["out"]) / f"rank{dp.rank}.pt")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_gloo_workers_keep_alpha_and_paths_identical(tmp_path: Path) -> None:
    from fnatune.tune import Resources, data_parallel, ray_session

    with ray_session(num_cpus=2):
        data_parallel(_search_worker, {"workdir": str(tmp_path / "work"), "out": str(tmp_path)}, workers=2,
                      per_worker=Resources(cpu=1), storage=tmp_path / "train")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["paths"]) == 3 * 4 and r0["paths"] == r1["paths"]  # one weight step per path, rank 0's on both
    assert len({tuple(p) for p in r0["paths"]}) > 1                  # and they are sampled, not fixed
    assert all(torch.equal(a, b) for a, b in zip(r0["alpha"], r1["alpha"]))
    assert any(a.abs().max() > 0 for a in r0["alpha"])                # alpha moved during the two search epochs
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
    assert r0["seen"] != r1["seen"]                                   # each rank read its own shard
    assert r0["derived"] == r1["derived"] and len(r0["derived"]["scored"]) == 3
    # rank 0 wrote the checkpoint, rank 1 only its RNG and data position beside it; each keeps the one before
    # (the fallback when the newest is found damaged)
    assert {p.name for p in (tmp_path / "work").glob("checkpoint*.pt")} == {
        "checkpoint.pt", "checkpoint.rank1.pt", "checkpoint.prev.pt", "checkpoint.rank1.prev.pt"}


def test_shards_are_disjoint_and_equally_long() -> None:
    ds = tiny_dataset(11)
    a, b, c = (shard(ds, r, 3) for r in range(3))
    assert len(a) == len(b) == len(c) == 3
    idx = [set(s.indices) for s in (a, b, c)]  # type: ignore[attr-defined]
    assert not (idx[0] & idx[1]) and not (idx[1] & idx[2]) and len(set().union(*idx)) == 9


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_search_and_finetune_run_data_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``resources.workers: 2``: the trial runs its search and fine-tune on two Ray Train workers; rank 0
    writes the stage outputs, the other stages run in the trial as usual."""
    import json

    from click.testing import CliRunner

    from fnatune.cli import main
    from tests.test_tune import _micro

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    cfg = _micro(tmp_path, {"resources": {"workers": 2}, "search": {"batch_size": 4, "epochs": 3, "warmup_epochs": 1}})
    res = CliRunner().invoke(main, ["run", str(cfg), "--run-dir", "dp", "--set", "tracking.enabled=false"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "dp"
    hist = json.loads((run / "stages/search/alpha_history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1, 2] and (run / "arch.json").exists()
    assert (run / "stages/finetune/model.pt").exists() and (run / "stages/evaluate/metrics.json").exists()
    assert {p.name for p in (run / "tune").iterdir()} >= {"dp-search", "dp-finetune", "experiment"}
