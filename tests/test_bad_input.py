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
