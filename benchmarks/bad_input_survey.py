"""Bad input, tried as a user would: each case runs the real ``fnatune`` command in a fresh process on a
small generated set with one thing broken, and prints the exit code, the seconds until the answer, whether
the answer is one clear ``Error:`` line (no traceback), and that line.

    python benchmarks/bad_input_survey.py [--only SUBSTRING]

Not a test (the tests in tests/test_bad_input.py, test_cli.py and test_config.py assert the messages); this
is the survey behind the counts in the issue notes, and a quick way to see what a new kind of bad input gets.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from fnatune.data.coco import ann_path, generate_coco
from fnatune.data.keypoints import generate_coco_keypoints
from fnatune.data.synthetic import generate_cityscapes

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "tiny"


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    out = edit(data)
    path.write_text(json.dumps(data if out is None else out))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


def _set_ann(key: str, value: object) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        d["annotations"][0][key] = value
    return edit


def _cases(work: Path) -> list[tuple[str, str, Callable[[Path], list[str]]]]:
    """(name, data kind, prepare(root) -> CLI arguments); the data kind says which generated set to copy."""
    seg = [str(TINY / "seg.yaml")]
    det = [str(TINY / "det.yaml")]
    pose = [str(TINY / "pose.yaml")]

    def run(cfg: list[str], *sets: str) -> Callable[[Path], list[str]]:
        return lambda root: ["run", *cfg, "--run-dir", str(root.parent / "r"),
                             *[a for s in (f"data.root={root}", "data.generate=null", *sets) for a in ("--set", s)]]

    def broken(cfg: list[str], corrupt: Callable[[Path], object], *sets: str) -> Callable[[Path], list[str]]:
        def prepare(root: Path) -> list[str]:
            corrupt(root)
            return run(cfg, *sets)(root)
        return prepare

    label = "gtFine/train/*/*_labelTrainIds.png"
    seg_img = "leftImg8bit/train/*/*_leftImg8bit.png"
    bad_yaml = work / "bad.yaml"
    bad_yaml.write_text("name: x\ntask: [seg\n")
    empty = work / "empty.yaml"
    empty.write_text("")
    twice = work / "twice.yaml"
    twice.write_text((TINY / "seg.yaml").read_text() + "\nname: again\n")
    not_json = work / "lut.json"
    not_json.write_text("{oops")
    cut = work / "cut.json"
    arch = json.loads((ROOT / "search_spaces/archs/fna_seg.json").read_text())
    cut.write_text(json.dumps({**arch, "stages": arch["stages"][:-1]}))
    (work / "a_file").write_text("")

    def resume_damaged(root: Path) -> list[str]:
        from fnatune.config import load_config
        from fnatune.rundir import RunDir

        run = RunDir(root.parent / "damaged")
        run.write_config(load_config(TINY / "pose.yaml"), "pose.yaml")
        run.write_state({"parent_run": "x"})
        run.config_path.write_text("name: x\n  task: [pose\n")
        return ["resume", str(run.path)]

    def resume_changed(*sets: str) -> Callable[[Path], list[str]]:
        def prepare(root: Path) -> list[str]:
            from fnatune.config import load_config
            from fnatune.rundir import RunDir

            run = RunDir(root.parent / "stopped")
            run.write_config(load_config(TINY / "seg.yaml"), "seg.yaml")
            run.write_state({"parent_run": "x"})
            for stage in ("data", "seed", "supernet", "search"):
                run.mark_done(stage, {"outputs": {}, "metrics": {}, "hours": 0.0})
            return ["resume", str(run.path), *[a for s in sets for a in ("--set", s)]]
        return prepare
    unknown_key = work / "unknown_key.yaml"
    unknown_key.write_text(f"_base_: {TINY / 'seg.yaml'}\nsearhc: {{epochs: 3}}\n")
    return [
        # data: Cityscapes layout
        ("seg: data root missing", "seg", lambda r: run(seg)(r.parent / "nowhere")),
        ("seg: label id out of range", "seg", broken(seg, lambda r: Image.fromarray(
            np.full((32, 64), 77, np.uint8)).save(_first(r, label)))),
        ("seg: label file missing", "seg", broken(seg, lambda r: _first(r, label).unlink())),
        ("seg: image truncated", "seg", broken(seg, lambda r: _truncate(_first(r, seg_img)))),
        ("seg: image not an image", "seg", broken(seg, lambda r: _first(r, seg_img).write_text("<html>"))),
        ("seg: label of another size", "seg", broken(seg, lambda r: Image.fromarray(
            np.zeros((16, 64), np.uint8)).save(_first(r, label)))),
        # data: COCO detection
        ("det: annotation file missing", "det", broken(det, lambda r: ann_path(r, "train").unlink())),
        ("det: annotation file not JSON", "det", broken(det, lambda r: ann_path(r, "train").write_text("{oops"))),
        ("det: annotations a JSON list", "det", broken(det, lambda r: _edit_json(ann_path(r, "train"),
                                                                                 lambda d: d["annotations"]))),
        ("det: annotation without bbox", "det", broken(det, lambda r: _edit_json(
            ann_path(r, "train"), lambda d: d["annotations"][0].pop("bbox") and None))),
        ("det: bbox of 3 numbers", "det", broken(det, lambda r: _edit_json(ann_path(r, "train"),
                                                                           _set_ann("bbox", [1, 2, 3])))),
        ("det: bbox outside its image", "det", broken(det, lambda r: _edit_json(
            ann_path(r, "train"), _set_ann("bbox", [500, 500, 10, 10])))),
        ("det: unknown category", "det", broken(det, lambda r: _edit_json(ann_path(r, "train"),
                                                                          _set_ann("category_id", 999)))),
        ("det: image file missing", "det", broken(det, lambda r: _first(r, "train2017/*.jpg").unlink())),
        ("det: image truncated", "det", broken(det, lambda r: _truncate(_first(r, "val2017/*.jpg")))),
        ("det: image not an image", "det", broken(det, lambda r: _first(r, "train2017/*.jpg").write_text("404"))),
        ("det: image of another size", "det", broken(det, lambda r: Image.new("RGB", (50, 40)).save(
            _first(r, "train2017/*.jpg")))),
        ("det: image entry without size", "det", broken(det, lambda r: _edit_json(
            ann_path(r, "val"), lambda d: d["images"][0].pop("width") and None))),
        # data: COCO keypoints
        ("pose: keypoints of the wrong length", "pose", broken(pose, lambda r: _edit_json(
            r / "annotations/person_keypoints_train2017.json", _set_ann("keypoints", [1, 2, 2])))),
        ("pose: annotation file missing", "pose", broken(pose, lambda r: (
            r / "annotations/person_keypoints_val2017.json").unlink())),
        # config
        ("config: file missing", "seg", lambda r: ["run", str(work / "nope.yaml")]),
        ("config: YAML syntax", "seg", lambda r: ["run", str(bad_yaml)]),
        ("config: unknown key in the file", "seg", lambda r: ["run", str(unknown_key)]),
        ("config: --set unknown key", "seg", run(seg, "search.epochz=3")),
        ("config: --set wrong type", "seg", run(seg, "finetune.iters=many")),
        ("config: count beyond 64 bits", "seg", run(seg, "finetune.iters=99999999999999999999")),
        ("config: negative learning rate", "seg", run(seg, "finetune.optim.lr=-0.1")),
        ("config: unknown task", "seg", run(seg, "task=depth")),
        ("config: unknown search space", "seg", run(seg, "space=mbv2_sge")),
        ("config: unknown seed", "seg", run(seg, "seed_net.name=resnet9000")),
        ("config: seed that does not fit the space", "seg", run(seg, "seed_net.name=resnet18")),
        ("config: seed checkpoint missing", "seg", run(seg, f"seed_net.weights={work / 'gone' / 'seed.pth'}")),
        ("config: device cuda without CUDA", "seg", run(seg, "device=cuda")),
        ("run dir: resume of a directory that is no run", "seg", lambda r: ["resume", str(r)]),
        # other commands
        ("cost: arch file missing", "seg", lambda r: ["cost", "--arch", str(work / "x.json"), "--input", "64"]),
        ("cost: input size not HxW", "seg", lambda r: ["cost", "--arch", str(ROOT / "search_spaces/archs/fna_seg.json"),
                                                      "--input", "big"]),
        ("remap: seed that does not fit the space", "seg", lambda r: [
            "remap", "--seed", "resnet18", "--space", "mbv2_det", "--out", str(r.parent / "o")]),
        ("spaces: misspelt space", "seg", lambda r: ["spaces", "mbv2_dt"]),
        # found by issue 26
        ("config: empty pipeline file", "seg", lambda r: ["run", str(empty)]),
        ("config: a key written twice", "seg", lambda r: ["run", str(twice)]),
        ("config: lr .inf", "seg", run(seg, "finetune.optim.lr=.inf")),
        ("config: warmup_epochs true", "seg", run(seg, "search.weight_lr.warmup_epochs=true")),
        ("tracking: URI without scheme", "seg", lambda r: [*run(seg)(r), "--tracking-uri", "localhost:5000"]),
        ("tracking: URI under a file", "seg", lambda r: [*run(seg)(r), "--tracking-uri",
                                                         f"sqlite:///{work / 'a_file'}/mlflow.db"]),
        ("cost: latency table not JSON", "seg", lambda r: ["cost", "--arch", str(ROOT / "search_spaces/archs/fna_seg.json"),
                                                          "--input", "64", "--lut", str(not_json)]),
        ("cost: arch with a stage removed", "seg", lambda r: ["cost", "--arch", str(cut), "--input", "64"]),
        ("remap: seed option of the wrong kind", "seg", lambda r: [
            "remap", "--seed", "mobilenet_v2", "--seed-option", "width_mult=wide", "--space", "mbv2_det",
            "--out", str(r.parent / "o")]),
        ("data: fewer samples than a batch", "pose", run(pose)),
        ("resume: config.yaml not YAML", "seg", resume_damaged),
        ("resume --set: a finished stage's setting", "seg", resume_changed("search.epochs=3")),
        ("resume --set: a key that does not exist", "seg", resume_changed("finetune.iter=3")),
    ]


def _generate(kind: str, where: Path) -> Path:
    if kind == "seg":
        return generate_cityscapes(where, 2, 1, (32, 64), 0)
    if kind == "det":
        return generate_coco(where, 3, 2, (96, 128), seed=0, max_objects=2)
    return generate_coco_keypoints(where, 4, 2, (96, 128), seed=0, max_people=2)  # fewer people than a batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    args = ap.parse_args()
    clear = fast = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [c for c in _cases(work) if args.only in c[0]]
        env = {**os.environ, "FNATUNE_CACHE": str(work / "cache"), "CUDA_VISIBLE_DEVICES": ""}
        for i, (name, kind, prepare) in enumerate(cases):
            case_dir = work / f"case{i}"
            root = _generate(kind, case_dir / "data")
            argv = prepare(root)
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "fnatune.cli", *argv], cwd=case_dir, env=env,
                                  capture_output=True, text=True, timeout=600)
            took = time.monotonic() - t0
            out = (proc.stdout + proc.stderr).strip().splitlines()
            errors = [line for line in out if line.startswith("Error: ")]
            one_line = proc.returncode != 0 and len(errors) == 1 and not any("Traceback" in x for x in out)
            clear += one_line
            fast += one_line and took < 5.0
            print(f"{name:<46} exit {proc.returncode:>3}  {took:5.1f} s  {'clear' if one_line else 'UNCLEAR'}  "
                  f"{(errors or out or [''])[-1][:160]}", flush=True)
    print(f"\n{clear} of {len(cases)} kinds of bad input answered with one clear line ({fast} of them in under 5 s)")


if __name__ == "__main__":
    main()
