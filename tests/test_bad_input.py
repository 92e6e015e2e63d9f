"""Bad input answers at once: `fnatune run` checks the device and the data in the driver, before Ray starts or
anything is pretrained, and says in one line which file or field is wrong and what was expected."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fnatune.cli import main
from fnatune.data.coco import ann_path, check_coco, generate_coco
from fnatune.data.synthetic import generate_cityscapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting Ray at all fails the test: every case here must be answered before."""
    from fnatune import tune

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started for an input that the driver should have refused")

    monkeypatch.setattr(tune, "ray_session", refuse)


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    out = edit(data)
    path.write_text(json.dumps(data if out is None else out))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def _first_image(root: Path, split: str) -> Path:
    return sorted((root / f"{split}2017").glob("*.jpg"))[0]


def _set_box(box: object) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        d["annotations"][0]["bbox"] = box
    return edit


def _drop_box(d: dict) -> None:
    del d["annotations"][0]["bbox"]


DET_CASES = {
    "truncated image": (lambda r: _truncate(_first_image(r, "val")), r"000000100001\.jpg is truncated"),
    "not an image": (lambda r: _first_image(r, "train").write_text("<html>404</html>"),
                     r"000000000001\.jpg is not an image file"),
    "image of another size": (lambda r: Image.new("RGB", (50, 40)).save(_first_image(r, "train")),
                              r"000000000001\.jpg is 50x40, but instances_train2017\.json says 128x96"),
    "annotations a JSON list": (lambda r: _edit_json(ann_path(r, "train"), lambda d: d["annotations"]),
                                r"instances_train2017\.json: expected a JSON object .* got a JSON list"),
    "annotation without bbox": (lambda r: _edit_json(ann_path(r, "train"), _drop_box),
                                r"annotation 1 has bbox None; expected \[x, y, width, height\]"),
    "bbox of 3 numbers": (lambda r: _edit_json(ann_path(r, "train"), _set_box([1, 2, 3])),
                          r"annotation 1 has bbox \[1, 2, 3\]; expected \[x, y, width, height\]"),
    "image entry without size": (lambda r: _edit_json(ann_path(r, "val"), lambda d: d["images"][0].pop("width") and None),
                                 r"instances_val2017\.json: image entry .* lacks one of 'id', 'file_name', 'width'"),
}


@pytest.mark.parametrize("case", list(DET_CASES))
def test_bad_coco_data_is_refused_before_ray_starts(case: str, tmp_path: Path, no_ray: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    root = generate_coco(tmp_path / "coco", 3, 2, (96, 128), seed=0, max_objects=2)
    corrupt, message = DET_CASES[case]
    corrupt(root)
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/tiny/det.yaml"), "--run-dir", "r",
                                    "--set", f"data.root={root}", "--set", "data.generate=null"])
    took = time.monotonic() - t0
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()  # the run's first line, then one line of error
    assert len(lines) == 2 and lines[0].startswith("fnatune run ") and lines[1].startswith("Error: "), res.output
    assert re.search(message, lines[1]), lines[1]
    assert took < 30, took  # seconds on the tiny set (today's figure: ~2 s), not a trial's worth of minutes
    assert not (tmp_path / "r/run.json").exists()


def test_a_zero_sized_box_is_skipped_and_counted_with_a_warning(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    root = generate_coco(tmp_path / "coco", 3, 2, (96, 128), seed=0, max_objects=2)
    _edit_json(ann_path(root, "train"), _set_box([10, 10, 0, 5]))
    with pytest.warns(UserWarning, match=r"1 annotation\(s\) with a zero width or height \(e\.g\. id 1\) are skipped"):
        info = check_coco(root, "train", 3)
    assert info["empty_boxes"] == 1 and info["images"] == 3


def test_a_label_of_another_size_than_its_image_is_named(tmp_path: Path, no_ray: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    root = generate_cityscapes(tmp_path / "cs", 2, 1, (32, 64), 0)
    label = sorted((root / "gtFine/train").glob("*/*_labelTrainIds.png"))[0]
    Image.fromarray(np.zeros((16, 64), np.uint8)).save(label)
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/tiny/seg.yaml"), "--run-dir", "r",
                                    "--set", f"data.root={root}", "--set", "data.generate=null"])
    assert res.exit_code == 2 and f"label file {label} is 64x16, but its image" in res.output, res.output
    assert "is 64x32" in res.output


def test_a_fixed_file_is_checked_again_and_an_unchanged_set_is_not_reread(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan cache is keyed by file size and mtime: a repaired file is looked at again, the others not."""
    from fnatune.data import scan

    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    root = generate_coco(tmp_path / "coco", 3, 2, (96, 128), seed=0, max_objects=2)
    bad = _first_image(root, "train")
    good = bad.read_bytes()
    _truncate(bad)
    with pytest.raises(Exception, match="is truncated"):
        check_coco(root, "train", 3)
    bad.write_bytes(good)
    seen: list[Path] = []
    real = scan.image_size
    monkeypatch.setattr(scan, "image_size", lambda p: (seen.append(p), real(p))[1])
    check_coco(root, "train", 3)
    assert seen == [bad]  # the two files that passed before are not read again
    seen.clear()
    check_coco(root, "train", 3)
    assert seen == []


def test_cuda_on_a_machine_without_it_is_refused_before_ray_starts(tmp_path: Path, no_ray: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/tiny/seg.yaml"), "--run-dir", "r",
                                    "--set", "device=cuda"])
    assert res.exit_code == 2 and "device: 'cuda' asked for, but CUDA is not available" in res.output, res.output
    assert "--set device=cpu" in res.output


def _resnet18_checkpoint(tmp: Path) -> str:
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp / "resnet18.pth")
    return f"seed_net.weights={tmp / 'resnet18.pth'}"


@pytest.mark.parametrize(("make_set", "expected"), [
    (lambda t: "space=mbv2_sge", r"unknown search space 'mbv2_sge'\. Did you mean 'mbv2_seg'\?"),
    (lambda t: "seed_net.name=resnet9000", r"unknown seed 'resnet9000'\. Did you mean 'resnet50'\?"),
    (lambda t: "seed_net.name=resnet18", r"seed 'resnet18' \(resnet blocks\) does not fit space 'mbv2_seg'"),
    (lambda t: f"seed_net.weights={t / 'gone.pth'}", r"seed checkpoint '.*gone\.pth' does not exist"),
    (_resnet18_checkpoint, r"resnet18\.pth' does not match seed 'mobilenet_v2'.*another network\?"),
])
def test_the_space_and_the_seed_are_checked_before_ray_starts_and_before_the_data(
        make_set: Callable[[Path], str], expected: str, tmp_path: Path, no_ray: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt space or seed, a seed whose blocks do not fit the space, a local seed checkpoint that is missing
    or of another network: each was found by the trial's seed or supernet stage, after Ray started (half a
    minute); the driver now checks the names first, and builds the seed (random weights, or the local checkpoint)
    after the data check."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/tiny/seg.yaml"), "--run-dir", "r",
                                    "--set", make_set(tmp_path)])
    assert res.exit_code == 2 and re.search(expected, _one_error_line(res.output)), res.output
    if "unknown" in expected:  # a misspelt name is said before the data is even generated
        assert not (tmp_path / "data").exists()


def _one_error_line(output: str) -> str:
    """The one ``Error:`` line of a refused command (and no traceback)."""
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.mark.parametrize("uri,expected", [
    ("localhost:5000", r"unknown scheme 'localhost:' .*did you mean http://localhost:5000\?"),
    ("http://", r"'http://': no host \(expected http://HOST:PORT\)"),
    ("sqlite:///{tmp}/a_file/mlflow.db", r"a_file is a file, not a folder; choose another path"),
    ("sqlite:///{tmp}", r"names a folder; name the database file in it"),
    ("{tmp}/mlruns", r"a folder store, which MLflow 3\.x keeps in maintenance mode"),
])
def test_a_tracking_uri_mlflow_cannot_use_is_refused_before_the_run_starts(
        uri: str, expected: str, tmp_path: Path, no_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "a_file").write_text("")
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/tiny/pose.yaml"), "--run-dir", "r",
                                    "--tracking-uri", uri.format(tmp=tmp_path)])
    assert res.exit_code == 2 and re.search(expected, _one_error_line(res.output)), res.output
    assert not (tmp_path / "r").exists()  # refused before a run directory exists


def test_a_latency_table_that_is_not_json_is_named(tmp_path: Path) -> None:
    lut = tmp_path / "lut.json"
    lut.write_text("{oops")
    res = CliRunner().invoke(main, ["cost", "--arch", str(ROOT / "search_spaces/archs/fna_seg.json"), "--input", "64",
                                    "--lut", str(lut)])
    assert res.exit_code == 2, res.output
    assert re.search(r"lut\.json: not a latency table: not valid JSON .*`fnatune lut build`", _one_error_line(res.output))
    lut.write_text('{"kind": "latency"}')
    res = CliRunner().invoke(main, ["cost", "--arch", str(ROOT / "search_spaces/archs/fna_seg.json"), "--input", "64",
                                    "--lut", str(lut)])
    assert res.exit_code == 2 and "without the fields `fnatune lut build` writes" in _one_error_line(res.output)


@pytest.mark.parametrize("option,expected", [
    ("width_mult=wide", r"option width_mult='wide' is text, where the model expects a number"),
    ("widht_mult=1.0", r"seed 'mobilenet_v2' has no option 'widht_mult'"),
])
def test_a_seed_option_the_model_refuses_is_named(option: str, expected: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["remap", "--seed", "mobilenet_v2", "--seed-option", option, "--space", "mbv2_det",
                                    "--arch", "supernet", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and re.search(expected, _one_error_line(res.output)), res.output


def test_an_arch_file_with_a_stage_removed_says_so(tmp_path: Path) -> None:
    d = json.loads((ROOT / "search_spaces/archs/fna_seg.json").read_text())
    d["stages"] = d["stages"][:-1]
    (tmp_path / "cut.json").write_text(json.dumps(d))
    res = CliRunner().invoke(main, ["cost", "--arch", str(tmp_path / "cut.json"), "--input", "64"])
    assert res.exit_code == 2, res.output
    assert "space 'mbv2_seg' has 7 stages, this arch 6 (a stage missing?)" in _one_error_line(res.output)
    assert "each stage needs" not in res.output


def test_a_data_set_smaller_than_a_batch_names_the_setting_before_ray_starts(tmp_path: Path, no_ray: None,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from fnatune.data.keypoints import generate_coco_keypoints

    monkeypatch.chdir(tmp_path)
    root = generate_coco_keypoints(tmp_path / "kp", 4, 2, (96, 128), seed=0, max_people=2)
    args = ["run", str(ROOT / "pipelines/tiny/pose.yaml"), "--run-dir", "r", "--set", f"data.root={root}",
            "--set", "data.generate=null"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert re.search(r"the search's (arch|weight)-step part of the train set has \d sample\(s\), fewer than one batch "
                     r"of search\.batch_size=8: lower it \(--set search\.batch_size=\d\)", _one_error_line(res.output))
    res = CliRunner().invoke(main, [*args, "--set", "search.batch_size=2"])
    assert res.exit_code == 2 and re.search(r"the fine-tune's train set has \d sample\(s\), fewer than one batch of "
                                            r"finetune\.batch_size=16", _one_error_line(res.output)), res.output
    assert not (tmp_path / "r/run.json").exists()


def _stopped_run(tmp_path: Path) -> Path:
    """A run directory as a killed run leaves it: its config, its state, one finished stage."""
    from fnatune.config import load_config
    from fnatune.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.write_config(load_config(ROOT / "pipelines/tiny/pose.yaml"), "pose.yaml")
    run.write_state({"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "parent_run": "x"})
    run.mark_done("data", {"outputs": {}, "metrics": {}, "hours": 0.0})
    return run.path


@pytest.mark.parametrize("damage,expected", [
    (lambda run: (run / "config.yaml").write_text("name: x\n  task: [pose\n"),
     r"run/config\.yaml, line 2 column 7: not valid YAML"),
    (lambda run: (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage"),
     r"run/config\.yaml: cannot be read as a text file"),
    (lambda run: (run / "run.json").write_text('{"tracking_uri": "sqlite:'),
     r"run/run\.json is damaged \(JSONDecodeError: .*\); it holds the run's MLflow run ids"),
    (lambda run: (run / "stages/data/done.json").write_text("[]"),
     r"stages/data/done\.json is damaged \(a JSON list, not an object\); delete it and `fnatune resume .*` runs "
     r"stage 'data' again"),
])
def test_damaged_run_files_are_named_when_the_run_is_resumed(damage: Callable[[Path], object], expected: str,
                                                             tmp_path: Path, no_ray: None) -> None:
    run = _stopped_run(tmp_path)
    damage(run)
    res = CliRunner().invoke(main, ["resume", str(run)])
    assert res.exit_code == 2 and re.search(expected, _one_error_line(res.output)), res.output


@pytest.mark.parametrize("sets,expected", [
    (["backend=mmdet"], r"backend: unknown backend 'mmdet'; expected one of torchvision, mm"),
    (["backend=mm"], r"backend: mm needs OpenMMLab, and this environment lacks mmdet, mmcv\._ext \(mmcv's compiled "
                     r"ops\); install it with `make install` .* or use backend: torchvision"),
])
def test_a_backend_that_cannot_run_is_one_line_before_ray_starts(sets: list[str], expected: str, tmp_path: Path,
                                                                 no_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import fnatune.mm

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fnatune.mm, "missing", lambda: ["mmdet", "mmcv._ext (mmcv's compiled ops)"])
    args = ["run", str(ROOT / "pipelines/tiny/det.yaml"), "--run-dir", "r"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert re.fullmatch(expected, res.output.splitlines()[-1].strip()), res.output


def test_pose_on_the_mm_backend_is_refused_naming_its_one_backend(tmp_path: Path, no_ray: None) -> None:
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/tiny/pose.yaml"), "--run-dir", str(tmp_path / "r"),
                                    "--set", "backend=mm"])
    assert res.exit_code == 2 and res.output.splitlines()[-1].strip() == "backend: task pose runs on torchvision only, not mm"


def test_an_openmmlab_config_given_as_a_pipeline_says_what_it_is(tmp_path: Path, no_ray: None) -> None:
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/mm/retinanet_fna_coco.py"), "--run-dir",
                                    str(tmp_path / "r")])
    assert res.exit_code == 2
    line = _one_error_line(res.output)
    assert "retinanet_fna_coco.py is a Python file, an OpenMMLab config" in line and "backend: mm" in line
