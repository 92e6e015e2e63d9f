"""Settings changed at resume (fnatune/reconfigure.py): how-keys apply in place, a setting of an unfinished stage
starts that stage over (its work set aside, its MLflow stage run ended), one of a finished stage is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fnatune.config import load_config
from fnatune.errors import FnatuneError
from fnatune.reconfigure import apply_changes, first_reader, is_how, plan_changes, tag_changes
from fnatune.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
FLOW = ["data", "seed", "supernet", "search", "target", "finetune", "evaluate", "export"]


def _run(tmp_path: Path, done: tuple[str, ...], started: str | None = None, pipeline: str = "tiny/seg.yaml"
         ) -> tuple[object, RunDir]:
    cfg = load_config(ROOT / "pipelines" / pipeline)
    run = RunDir(tmp_path / "run")
    run.write_config(cfg, "test")
    for stage in done:
        run.mark_done(stage, {"outputs": {}, "metrics": {}, "hours": 0.0})
    if started:
        (run.stage_dir(started) / "work").mkdir(parents=True)
        (run.stage_dir(started) / "work/checkpoint.pt").write_bytes(b"step 4")
    run.write_state({"parent_run": "p", "stage_runs": {s: f"r-{s}" for s in (*done, *([started] if started else []))}})
    return cfg, run


@pytest.mark.parametrize(("key", "how", "reader"), [
    ("device", True, "data"), ("resources.cpu", True, "data"), ("tune.retries", True, "data"),
    ("search.recompute_mixed", True, "search"), ("data.num_workers", True, "data"),
    ("search.batch_size", False, "search"), ("search.augment.crop", False, "search"),
    ("search.init", False, "supernet"), ("finetune.init", False, "target"), ("finetune.optim.lr", False, "finetune"),
    ("remap.kernel", False, "supernet"), ("export.opset", False, "export"), ("evaluate.mode", False, "evaluate"),
    ("data.num_classes", False, "data"), ("seed", False, "data"), ("space", False, "data"),
    ("resources.workers", False, "data"), ("searchy", False, "data"),
])
def test_how_keys_and_the_stage_that_reads_a_key_first(key: str, how: bool, reader: str) -> None:
    assert is_how(key) is how
    if not how:
        assert first_reader(key, FLOW) == reader
    # without a search, remap.* is read first by the target's remapping and arch by the fixed-arch stage
    assert first_reader("remap.kernel", ["data", "seed", "arch", "target", "finetune"]) == "target"
    assert first_reader("arch", ["data", "seed", "arch", "target", "finetune"]) == "arch"


def test_a_how_change_and_a_change_for_a_stage_not_yet_started_restart_nothing(tmp_path: Path) -> None:
    cfg, run = _run(tmp_path, ("data", "seed", "supernet"), started="search")
    new, changes = plan_changes(cfg, run, ["search.recompute_mixed=1", "finetune.batch_size=2"])
    assert [(c.key, c.old, c.new, c.restarts) for c in changes] == [
        ("search.recompute_mixed", 0.7, 1.0, None), ("finetune.batch_size", cfg.finetune.batch_size, 2, None)]
    apply_changes(new, run, changes, "test resume")
    assert (run.stage_dir("search") / "work/checkpoint.pt").exists() and not (run.path / "set_aside").exists()
    assert run.read_config().search.recompute_mixed == 1.0 and run.read_config().finetune.batch_size == 2
    assert run.state()["stage_runs"]["search"] == "r-search"


def test_a_change_for_a_started_stage_sets_its_work_aside_and_ends_its_stage_run(tmp_path: Path) -> None:
    cfg, run = _run(tmp_path, ("data", "seed", "supernet"), started="search")
    new, changes = plan_changes(cfg, run, ["search.batch_size=1"])
    assert [(c.key, c.restarts) for c in changes] == [("search.batch_size", "search")]
    assert changes[0].describe() == "search.batch_size: 2 -> 1; stage 'search' starts over (its work so far is set aside)"
    apply_changes(new, run, changes, "test resume")
    assert not run.stage_dir("search").exists()
    aside, = (run.path / "set_aside").iterdir()
    assert aside.name.startswith("search-") and (aside / "work/checkpoint.pt").read_bytes() == b"step 4"
    state = run.state()
    assert "search" not in state["stage_runs"] and state["stage_runs"]["supernet"] == "r-supernet"
    assert state["resume_changes"][0]["changes"] == [changes[0].describe()]
    assert run.read_config().search.batch_size == 1 and run.is_done("supernet")

    class Tracker:
        def __init__(self) -> None:
            self.tags: dict[str, dict[str, str]] = {}
            self.ended: list[tuple[str, str]] = []

        def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
            self.tags.setdefault(run_id, {}).update(tags)

        def end_run(self, run_id: str, status: str = "FINISHED") -> None:
            self.ended.append((run_id, status))

    t = Tracker()
    tag_changes(run, t, "p")
    assert "search.batch_size: 2 -> 1" in t.tags["p"]["fnatune.resume_changes"]
    assert t.ended == [("r-search", "KILLED")] and "fnatune.set_aside" in t.tags["r-search"]
    tag_changes(run, t, "p")  # once per resume
    assert t.ended == [("r-search", "KILLED")]
    # the search starts again and is changed again (within the same second): each attempt keeps its own folder
    (run.stage_dir("search") / "work").mkdir(parents=True)
    new, changes = plan_changes(run.read_config(), run, ["search.batch_size=2"])
    apply_changes(new, run, changes, "test resume")
    assert len(list((run.path / "set_aside").iterdir())) == 2 and len(run.state()["resume_changes"]) == 2


@pytest.mark.parametrize(("sets", "message"), [
    (["data.num_classes=5"], "--set data.num_classes: stage 'data', whose result it shapes, has finished"),
    (["search.epochs=3"], "--set search.epochs: stage 'search', whose result it shapes, has finished"),
    (["search.batch_size=0"], "search.batch_size"),
    (["search.enabled=false", "arch=seed"], "--set: the change turns the run's stages from data, seed, supernet, search"),
    (["searchh.epochs=3"], "searchh"),
    (["tracking.experiment=other"], "--set tracking.experiment: the run's MLflow runs exist already"),
])
def test_a_change_that_cannot_be_made_is_one_line_and_changes_nothing(tmp_path: Path, sets: list[str],
                                                                      message: str) -> None:
    cfg, run = _run(tmp_path, ("data", "seed", "supernet", "search"), started="target")
    before = run.config_path.read_text()
    with pytest.raises(FnatuneError) as e:
        plan_changes(cfg, run, sets)
    assert message in str(e.value)
    if message.startswith("--set"):  # a schema error lists its problems as `fnatune run --set` does
        assert "\n" not in str(e.value)
    assert run.config_path.read_text() == before and run.stage_dir("target").exists()


def test_a_sweep_takes_only_how_changes(tmp_path: Path) -> None:
    cfg, run = _run(tmp_path, (), pipeline="tiny/sweep.yaml")
    _, changes = plan_changes(cfg, run, ["search.recompute_mixed=1", "tune.retries=0"])
    assert [c.key for c in changes] == ["search.recompute_mixed", "tune.retries"]
    with pytest.raises(FnatuneError, match="a sweep's or variants' trials keep their own configs"):
        plan_changes(cfg, run, ["search.batch_size=1"])
    with pytest.raises(FnatuneError, match="cannot change a run's sweep or variants"):
        plan_changes(cfg, run, ["sweep.num_samples=9"])


def test_resume_set_through_the_cli_refuses_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fnatune.cli import main

    _, run = _run(tmp_path, ("data", "seed", "supernet", "search"), started="target")
    res = CliRunner().invoke(main, ["resume", str(run.path), "--set", "search.epochs=3"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1].startswith("Error: --set search.epochs: stage 'search'")
    assert json.loads((run.path / "run.json").read_text()).get("resume_changes") is None
