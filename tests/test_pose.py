"""The pose task's parts: the heatmap codec, flip handling, the top-down crop geometry, the COCO keypoints
generator and checks, OKS AP by pycocotools, and the whole network's cost against an independent count."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fnatune.data.keypoints import (
    FLIP_PAIRS,
    KEYPOINTS,
    check_coco_keypoints,
    generate_coco_keypoints,
    person_instances,
    read_keypoint_annotations,
)
from fnatune.data.topdown import Augment, TopDownDataset, apply, box_to_center_scale, crop_matrix, to_image, warp
from fnatune.errors import FnatuneError
from fnatune.heads.pose import PoseNet, decode, encode, flip_back, weighted_mse

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def kp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_coco_keypoints(tmp_path_factory.mktemp("kp") / "coco", num_train=12, num_val=4, size=(128, 192),
                                   seed=3, max_people=3)


# ------------------------------------------------------------------------------------------ heatmap codec
def test_encode_decode_round_trips_joints_within_one_heatmap_pixel() -> None:
    rng = np.random.default_rng(0)
    stride, hm = 4, (32, 24)
    joints = np.zeros((17, 3), np.float32)
    joints[:, 0] = rng.uniform(4, 92, 17)
    joints[:, 1] = rng.uniform(4, 124, 17)
    joints[:, 2] = 2
    heat, weight = encode(joints, hm, stride, sigma=2.0)
    assert heat.shape == (17, 32, 24) and weight.tolist() == [1.0] * 17
    assert heat.max() == pytest.approx(1.0)
    coords, peaks = decode(torch.from_numpy(heat)[None])
    err = np.abs(coords[0].numpy() * stride - joints[:, :2])
    assert err.max() <= 0.5 * stride + 1e-6  # the Gaussian is centred on the nearest heatmap pixel
    assert torch.all(peaks == 1.0)


def test_decode_moves_a_quarter_pixel_towards_the_higher_neighbour() -> None:
    heat = torch.zeros(1, 1, 5, 5)
    heat[0, 0, 2, 2], heat[0, 0, 2, 3], heat[0, 0, 1, 2] = 1.0, 0.6, 0.3
    coords, _ = decode(heat)
    assert coords[0, 0].tolist() == [2.25, 1.75]


def test_unlabelled_and_off_map_joints_weigh_nothing_and_drop_out_of_the_loss() -> None:
    joints = np.array([[10, 10, 2], [20, 20, 0], [500, 10, 1]] + [[8, 8, 1]] * 14, np.float32)
    heat, weight = encode(joints, (16, 16), 4, 2.0)
    assert weight[:3].tolist() == [1.0, 0.0, 0.0] and not heat[1].any() and not heat[2].any()
    target, w = torch.from_numpy(heat)[None], torch.from_numpy(weight)[None]
    pred = target.clone()
    pred[0, 1] += 5.0  # anything at all for an unlabelled joint
    assert weighted_mse(pred, target, w).item() == 0.0
    pred[0, 0] += 1.0
    assert weighted_mse(pred, target, w).item() > 0.0


def test_flip_back_mirrors_heatmaps_and_swaps_every_left_right_pair() -> None:
    w_in = 96
    rng = np.random.default_rng(1)
    joints = np.concatenate([rng.integers(2, 22, (17, 1)) * 4, rng.integers(2, 30, (17, 1)) * 4,
                             np.full((17, 1), 2)], axis=1).astype(np.float32)
    mirrored = joints.copy()
    mirrored[:, 0] = (w_in // 4 - 1) * 4 - joints[:, 0]  # the mirror image's heatmap columns, left and right swapped
    for a, b in FLIP_PAIRS:
        mirrored[[a, b]] = mirrored[[b, a]]
    heat = torch.from_numpy(encode(joints, (32, 24), 4)[0])[None]
    heat_of_mirror = torch.from_numpy(encode(mirrored, (32, 24), 4)[0])[None]
    assert torch.equal(flip_back(heat_of_mirror, FLIP_PAIRS, shift=False), heat)
    shifted = flip_back(heat_of_mirror, FLIP_PAIRS, shift=True)
    assert torch.equal(shifted[..., 1:], heat[..., :-1])  # SimpleBaseline's shift: one heatmap pixel right
    names = {KEYPOINTS[a]: KEYPOINTS[b] for a, b in FLIP_PAIRS}
    assert len(FLIP_PAIRS) == 8 and all(k.replace("left", "right") == v for k, v in names.items())


# ------------------------------------------------------------------------------------------ crop geometry
@pytest.mark.parametrize("rotation", [0.0, 30.0, -60.0])
@pytest.mark.parametrize("box_size", [(30.0, 40.0), (60.0, 80.0), (200.0, 260.0)])
def test_a_drawn_point_lands_where_the_crop_matrix_sends_its_joint(rotation: float, box_size: tuple[float, float]
                                                                   ) -> None:
    img = np.zeros((100, 120, 3), np.uint8)
    img[40, 70] = 255
    m = crop_matrix(np.array([60.0, 50.0]), np.array(box_size), rotation, (128, 96))
    crop = np.asarray(warp(Image.fromarray(img), m, (128, 96)))[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:128, :96]
    centroid = np.array([(crop * xs).sum(), (crop * ys).sum()]) / crop.sum()
    assert np.abs(centroid - apply(m, np.array([[70.0, 40.0]]))[0]).max() < 0.6  # PIL's half-pixel convention


def test_crop_coordinates_map_back_to_the_image() -> None:
    center, size = box_to_center_scale((10, 20, 30, 90), aspect=96 / 128)
    assert size[0] / size[1] == pytest.approx(96 / 128) and size[1] == pytest.approx(90 * 1.25)
    pts = np.array([[12.0, 25.0], [39.5, 108.0], [25.0, 65.0]])
    crop_pts = apply(crop_matrix(center, size, 0.0, (128, 96)), pts)
    assert np.allclose(to_image(crop_pts, center, size, (128, 96)), pts)


def test_flip_augmentation_mirrors_the_crop_and_swaps_the_joint_targets(kp_root: Path) -> None:
    data = read_keypoint_annotations(kp_root, "train")
    inst = person_instances(data)[:1]
    kwargs = dict(image_dir=kp_root / "train2017", instances=inst, input_size=(128, 96), heatmap_stride=4, sigma=2.0,
                  mean=MEAN, std=STD)
    plain = TopDownDataset(**kwargs)[0]
    flipped = TopDownDataset(**kwargs, augment=Augment(scale_factor=0.0, rotation=0.0, rotation_prob=0.0, flip=1.0))[0]
    # SimpleBaseline flips the image and the box centre as x -> width - 1 - x, so the flipped crop is the mirrored
    # crop moved one pixel right (flip test's heatmap shift undoes it); joints move with the pixels
    assert torch.allclose(flipped["img"][..., 1:], plain["img"].flip(-1)[..., :-1], atol=0.05)
    swap = {**{a: b for a, b in FLIP_PAIRS}, **{b: a for a, b in FLIP_PAIRS}}
    assert torch.equal(flipped["weight"], plain["weight"][[swap.get(j, j) for j in range(17)]])
    labelled = [j for j in range(17) if plain["weight"][j] > 0]
    p, f = decode(plain["target"][None])[0][0], decode(flipped["target"][None])[0][0]
    assert labelled and all(abs(float(p[j, 0] + f[swap.get(j, j), 0]) - 24) <= 1 and p[j, 1] == f[swap.get(j, j), 1]
                            for j in labelled)  # mirrored over the 24 heatmap columns, same row


# ------------------------------------------------------------------------------------------ generated data
def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".jpg"):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_generator_writes_the_coco_keypoints_layout_deterministically(kp_root: Path, tmp_path: Path) -> None:
    again = generate_coco_keypoints(tmp_path / "again", num_train=12, num_val=4, size=(128, 192), seed=3, max_people=3)
    assert _digest(again) == _digest(kp_root)
    other = generate_coco_keypoints(tmp_path / "other", num_train=12, num_val=4, size=(128, 192), seed=4, max_people=3)
    assert _digest(other) != _digest(kp_root)
    for split in ("train", "val"):
        assert (kp_root / "annotations" / f"person_keypoints_{split}2017.json").is_file()
    data = read_keypoint_annotations(kp_root, "train")
    assert [c["name"] for c in data["categories"]] == ["person"] and data["categories"][0]["keypoints"] == list(KEYPOINTS)
    vis = np.concatenate([np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] for a in data["annotations"]])
    assert set(np.unique(vis)) == {0, 1, 2}  # unlabelled, occluded and visible joints all occur
    for a in data["annotations"]:
        assert a["num_keypoints"] == int((np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] > 0).sum())
    info = check_coco_keypoints(kp_root, "train")
    assert info["images"] == 12 and 0 < info["instances"] <= info["annotations"]


def test_person_instances_skip_crowd_and_zero_keypoint_annotations_as_cocos_tools_do(kp_root: Path) -> None:
    data = copy.deepcopy(read_keypoint_annotations(kp_root, "train"))
    base = len(person_instances(data))
    first = data["annotations"][0]
    crowd = {**first, "id": 10**6, "iscrowd": 1}
    empty = {**first, "id": 10**6 + 1, "keypoints": [0] * 51, "num_keypoints": 0}
    data["annotations"] += [crowd, empty]
    kept = person_instances(data)
    assert len(kept) == base and {i.ann_id for i in kept}.isdisjoint({crowd["id"], empty["id"]})
    some = [data["images"][0]["id"]]
    assert {i.image_id for i in person_instances(data, some)} <= set(some)


def _broken(kp_root: Path, tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(kp_root, root)
    path = root / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return root


def test_a_missing_keypoints_file_names_the_layout_and_the_tiny_pipeline(tmp_path: Path) -> None:
    with pytest.raises(FnatuneError) as e:
        check_coco_keypoints(tmp_path / "nowhere", "train")
    msg = str(e.value)
    assert "person_keypoints_train2017.json" in msg and "train2017" in msg and "pipelines/tiny/pose.yaml" in msg


@pytest.mark.parametrize("what,change,expected", [
    ("keypoints", lambda d: d["annotations"][1].update(keypoints=[1, 2, 2] * 16), "keypoint list of 48 numbers"),
    ("bbox", lambda d: d["annotations"][1].update(bbox=[150.0, 10.0, 80.0, 40.0]), "outside its 192x128 image"),
    ("category", lambda d: d["annotations"][1].update(category_id=3), "category_id 3, not person"),
])
def test_bad_annotations_are_named_by_their_id(kp_root: Path, tmp_path: Path, what: str, change, expected: str
                                               ) -> None:  # type: ignore[no-untyped-def]
    root = _broken(kp_root, tmp_path, change)
    bad_id = json.loads((root / "annotations" / "person_keypoints_train2017.json").read_text())["annotations"][1]["id"]
    with pytest.raises(FnatuneError, match=expected) as e:
        check_coco_keypoints(root, "train")
    assert f"annotation {bad_id} " in str(e.value) and "person_keypoints_train2017.json" in str(e.value)


# ------------------------------------------------------------------------------------------ OKS AP
def _hand_made_set(path: Path) -> dict:  # type: ignore[type-arg]
    """Three images, four people with every joint visible, at different sizes (OKS scales with area)."""
    rng = np.random.default_rng(7)
    images, anns = [], []
    for i in range(3):
        images.append({"id": i + 1, "file_name": f"{i + 1}.jpg", "width": 320, "height": 240})
    boxes = [(1, (40, 60, 80, 160)), (1, (150, 30, 60, 120)), (2, (20, 20, 90, 180)), (3, (10, 10, 100, 180))]
    for k, (img, (x, y, w, h)) in enumerate(boxes):
        pts = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], axis=1)
        anns.append({"id": k + 1, "image_id": img, "category_id": 1, "bbox": [x, y, w, h], "area": w * h * 0.6,
                     "iscrowd": 0, "num_keypoints": 17, "keypoints": pts.reshape(-1).tolist()})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(KEYPOINTS)}]}
    path.write_text(json.dumps(data))
    return data


def _predictions(data: dict, noise: float, seed: int = 0) -> list[dict]:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    out = []
    for a in data["annotations"]:
        pts = np.asarray(a["keypoints"], np.float64).reshape(-1, 3).copy()
        pts[:, :2] += rng.normal(0, noise, (17, 2)) * np.sqrt(a["area"])
        pts[:, 2] = 1.0
        out.append({"image_id": a["image_id"], "category_id": 1, "keypoints": pts.reshape(-1).tolist(), "score": 0.9})
    return out


def test_oks_ap_is_100_for_perfect_predictions_and_falls_with_the_error(tmp_path: Path) -> None:
    from fnatune.tasks.pose import METRICS, coco_keypoint_metrics

    path = tmp_path / "person_keypoints_val2017.json"
    data = _hand_made_set(path)
    perfect = coco_keypoint_metrics(path, _predictions(data, 0.0))
    assert set(perfect) == set(METRICS) and perfect["AP"] == pytest.approx(100.0) and perfect["AR"] == pytest.approx(100.0)
    small, large = (coco_keypoint_metrics(path, _predictions(data, n))["AP"] for n in (0.03, 0.15))
    assert 100.0 > small > large >= 0.0
    missing_person = coco_keypoint_metrics(path, _predictions(data, 0.0)[1:])
    assert missing_person["AR"] == pytest.approx(75.0)
    assert coco_keypoint_metrics(path, [])["AP"] == 0.0


def test_ground_truth_heatmaps_score_near_perfect_through_the_whole_evaluation_path(kp_root: Path) -> None:
    """Targets -> decode -> back to the image -> pycocotools: only the heatmap quantisation is lost."""
    from fnatune.data.coco import ann_path
    from fnatune.tasks.pose import coco_keypoint_metrics, keypoint_results

    ds = TopDownDataset(kp_root / "val2017", person_instances(read_keypoint_annotations(kp_root, "val")), (128, 96), 4,
                        2.0, MEAN, STD)
    items = [ds[i] for i in range(len(ds))]
    heat = torch.stack([it["target"] for it in items])
    results = keypoint_results(items, heat, ds.stride, ds.input_size)
    for it, r in zip(items, results):  # unlabelled joints get low peaks, not made-up confidence
        v = np.asarray(r["keypoints"]).reshape(-1, 3)[:, 2]
        assert np.all(v[it["weight"].numpy() == 0] == 0) and np.all(v[it["weight"].numpy() > 0] == 1)
    metrics = coco_keypoint_metrics(ann_path(kp_root, "val", "person_keypoints"), results)
    assert metrics["AP"] > 90.0, metrics


# ------------------------------------------------------------------------------------------ model and cost
def test_pose_net_on_the_seed_arch_matches_an_independent_count() -> None:
    """Params and MAdds of MobileNetV2-SimpleBaseline at 256x192 against torchvision's MobileNetV2 features and
    the head's closed form; mmpose's model zoo lists this network at 9.57M parameters."""
    import torchvision

    from fnatune.backbone import Backbone
    from fnatune.cost import count_madds, count_params
    from fnatune.seeds import load_seed

    arch = load_seed("mobilenet_v2").arch.with_taps(["tail"])
    net = PoseNet(Backbone(arch), 17, 256, 3)
    features = torchvision.models.mobilenet_v2(weights=None).features
    head_params = (1280 * 256 + 256 * 256 * 2) * 16 + 3 * 2 * 256 + 256 * 17 + 17
    assert count_params(net) == count_params(features) + head_params == 9_569_809
    in_pixels = 8 * 6  # the stride-32 feature of a 256x192 crop, then 16x12 and 32x24 into the next deconvolutions
    head_madds = 16 * 256 * (1280 * in_pixels + 256 * 4 * in_pixels + 256 * 16 * in_pixels) + 64 * 48 * (256 * 17 + 17)
    assert count_madds(net, (256, 192)) == count_madds(features, (256, 192)) + head_madds
    assert net.heatmap_stride == 4 and net(torch.zeros(1, 3, 256, 192)).shape == (1, 17, 64, 48)


def test_an_input_size_off_the_output_stride_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    from fnatune.config import apply_overrides, load_raw, validate
    from fnatune.tasks import get_task

    raw = apply_overrides(load_raw(ROOT / "pipelines/tiny/pose.yaml"),
                          {"pose.input_size": [100, 75], "data.root": str(tmp_path / "d")})
    backend = get_task("pose").backend_for(validate(raw, "pipelines/tiny/pose.yaml"))
    with pytest.raises(FnatuneError, match=r"pose.input_size \[100, 75\] is not a multiple .* stride 32.*\[128, 96\]"):
        backend.prepare()


def test_the_pose_recipe_is_simplebaselines() -> None:
    """pipelines/pose.yaml: Adam 1e-3, 140 epochs of 4,682 iterations at 32 crops, x0.1 at epochs 90 and 120."""
    from fnatune.config import load_config

    cfg = load_config(ROOT / "pipelines/pose.yaml")
    ft, per_epoch = cfg.finetune, -(-149_813 // 32)
    assert (ft.optim.name, ft.optim.lr, ft.batch_size) == ("adam", 1e-3, 32)
    assert ft.iters == 140 * per_epoch and list(ft.milestones) == [90 * per_epoch, 120 * per_epoch]
    p = cfg.task_section()
    assert (tuple(p.input_size), p.sigma, p.channels, p.num_deconv, p.flip_test) == ((256, 192), 2.0, 256, 3, True)
    assert cfg.space == "mbv2_pose" and cfg.seed_net.weights == "IMAGENET1K_V1"
