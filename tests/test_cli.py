"""The click CLI: spaces, seeds, remap, cost, and its error messages."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from fnatune.arch import Arch
from fnatune.cli import main
from fnatune.cost import count_madds, count_params
from fnatune.nets import ChildNet
from search_spaces import ARCHS_DIR


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_spaces_and_seeds() -> None:
    code, out = run("spaces")
    assert code == 0 and "mbv2_det" in out and "mbv2_seg" in out
    code, out = run("spaces", "mbv2_seg")
    assert code == 0 and "stage 5:   96 -> 160  stride 1 dilation 2 layers 4" in out
    code, out = run("seeds")
    assert code == 0 and "mobilenet_v2" in out and "mnasnet1_0" in out
    code, out = run("tasks")
    assert code == 0 and "seg    metric mIoU      space mbv2_seg" in out and "det    metric bbox_mAP  space mbv2_det" in out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "backends: torchvision, mm" in lines["det"] and "backends: torchvision, mm" in lines["seg"]
    assert lines["pose"].endswith("backends: torchvision")


def test_remap_writes_weights_report_and_arch(tmp_path: Path, mbv2_checkpoint) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "child"
    code, text = run("remap", "--seed", "mobilenet_v2", "--weights", str(mbv2_checkpoint[1]),
                     "--space", "mbv2_det", "--arch", "seed", "--out", str(out))
    assert code == 0, text
    arch = Arch.load(out / "arch.json")
    net = ChildNet(arch)
    net.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    report = json.loads((out / "remap_report.json").read_text())
    assert report["counts"] == {"copied": len(net.state_dict())}
    code, text = run("remap", "--seed", "mobilenet_v2", "--space", "mbv2_seg", "--arch", "supernet",
                     "--out", str(tmp_path / "super"), "--noise", "--kernel", "dilation")
    assert code == 0, text
    assert "SuperNet(mbv2_seg)" in text and not (tmp_path / "super" / "arch.json").exists()
    code, text = run("remap", "--seed", "mobilenet_v2", "--arch", str(ARCHS_DIR / "fna_seg.json"),
                     "--out", str(tmp_path / "fna"))
    assert code == 0 and "centre_padded" in text
    code, text = run("remap", "--seed", "mnasnet", "--seed-option", "alpha=1.2", "--space", "mbv2_det",
                     "--arch", "uniform", "--out", str(tmp_path / "nas"))
    assert code == 0 and "expanded" in text, text


def test_cost_json_matches_library() -> None:
    path = ARCHS_DIR / "fna_retinanet.json"
    code, out = run("cost", "--arch", str(path), "--input", "800x1088", "--json")
    assert code == 0
    data = json.loads(out)
    net = ChildNet(Arch.load(path))
    assert data["params"] == count_params(net) and data["madds"] == count_madds(net, (800, 1088))
    code, out = run("cost", "--arch", str(path), "--input", "224", "--task", "cls")
    assert code == 0 and "M params" in out and "B MAdds" in out


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    code, out = run("spaces", "mbv2_dt")
    assert code == 2 and "Error: unknown search space 'mbv2_dt'. Did you mean 'mbv2_det'?" in out
    assert "Traceback" not in out
    code, out = run("cost", "--arch", str(tmp_path / "x.json"), "--input", "64x64")
    assert code == 2 and "arch file" in out and "does not exist" in out
    code, out = run("cost", "--arch", str(ARCHS_DIR / "fna_seg.json"), "--input", "big")
    assert code == 2 and "expected HxW" in out
    code, out = run("remap", "--seed", "mobilenet_v2", "--arch", "uniform", "--out", str(tmp_path / "o"))
    assert code == 2 and "--arch uniform needs --space" in out
    code, out = run("remap", "--seed", "resnet9000", "--space", "mbv2_det", "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown seed 'resnet9000'" in out
    code, out = run("remap", "--seed", "resnet18", "--space", "mbv2_det", "--out", str(tmp_path / "o"))
    assert code == 2 and "Error: seed 'resnet18' (resnet blocks) does not fit space 'mbv2_det' (mbconv blocks)" in out
    code, out = run("remap", "--seed", "mobilenet_v2", "--seed-option", "width_mult", "--out", str(tmp_path / "o"))
    assert code == 2 and "expected KEY=VALUE" in out
    code, out = run("cost", "--arch", str(ARCHS_DIR / "fna_seg.json"), "--input", "64", "--task", "depth")
    assert code == 2 and "unknown task 'depth'" in out


def test_a_run_directory_has_one_owner(tmp_path: Path) -> None:
    """A second ``run``/``resume`` on a directory another process is working in is refused at once, naming that
    process; a lock file left by a process that died (the kernel has released its flock) is taken over."""
    import os

    from fnatune.rundir import RunDir

    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "busy"
    with RunDir(run_dir).owned():  # another open file description: flock refuses it even in this process
        code, out = run("run", str(root / "pipelines/tiny/seg.yaml"), "--run-dir", str(run_dir))
        assert code == 2 and f"{run_dir} is in use by process {os.getpid()}" in out and f"kill {os.getpid()}" in out
        assert not (run_dir / "run.json").exists()
    (run_dir / "owner.lock").write_text(json.dumps({"pid": 999999999, "host": "gone", "command": "fnatune run"}))
    with RunDir(run_dir).owned():
        assert json.loads((run_dir / "owner.lock").read_text())["pid"] == os.getpid()


def test_counts_beyond_a_64_bit_counter_are_config_errors(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    code, out = run("run", str(root / "pipelines/tiny/seg.yaml"), "--run-dir", str(tmp_path / "r"),
                    "--set", "finetune.iters=99999999999999999999")
    assert code == 2 and "finetune.iters: too large for a 64-bit counter" in out
    assert not (tmp_path / "r").exists()  # refused before the run directory is touched


def test_the_end_summary_gives_the_arch_its_cost_beside_the_seeds_and_time_per_stage(tmp_path: Path) -> None:
    import os

    from fnatune.cli import _run_facts
    from fnatune.rundir import RunDir
    from fnatune.space import get_space

    run = RunDir(tmp_path / "r")
    arch = get_space("mbv2_seg").first_arch()
    run.arch_path.parent.mkdir(parents=True, exist_ok=True)
    arch.save(run.arch_path)
    for i, (stage, hours) in enumerate((("search", 0.01), ("finetune", 0.05), ("export", 0.0))):
        metrics = {"madds_paper_resolution": 21.6e9, "params": 2.13e6, "seed_madds_paper_resolution": 24.52e9,
                   "seed_params": 2.57e6} if stage == "export" else {}
        run.mark_done(stage, {"outputs": {}, "metrics": metrics, "hours": hours})
        os.utime(run.stage_dir(stage) / run.DONE, (1000 + i, 1000 + i))  # completion order, not name order
    assert _run_facts(run) == [
        f"arch: {arch.block_string()}",
        "cost: 21.60 GMAdds, 2.13M params; the seed's own arch: 24.52 GMAdds, 2.57M params (whole network, the "
        "paper's resolution)",
        "time per stage: search 36.0 s, finetune 3.0 min, export 0.0 s (total 3.6 min)"]
