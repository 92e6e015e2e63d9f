"""Synthetic datasets (deterministic, real layouts) and the dataset checks' error messages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fnatune.data.synthetic import (
    CLASSES_DRAWN,
    check_cityscapes,
    generate_cityscapes,
    generate_classification,
)
from fnatune.errors import FnatuneError


def _labels(root: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted((root / "gtFine").rglob("*_gtFine_labelTrainIds.png"))]


def test_cityscapes_layout_is_deterministic_and_has_enough_classes(tmp_path: Path) -> None:
    a = generate_cityscapes(tmp_path / "a", 6, 2, (64, 128), seed=3)
    b = generate_cityscapes(tmp_path / "b", 6, 2, (64, 128), seed=3)
    c = generate_cityscapes(tmp_path / "c", 6, 2, (64, 128), seed=4)
    assert check_cityscapes(a, "train") == 6 and check_cityscapes(a, "val") == 2
    la, lb, lc = _labels(a), _labels(b), _labels(c)
    assert all(np.array_equal(x, y) for x, y in zip(la, lb))
    assert not all(np.array_equal(x, y) for x, y in zip(la, lc))
    present = set(np.unique(np.concatenate([x.ravel() for x in la])).tolist())
    assert len(present) >= 5 and present <= set(CLASSES_DRAWN)
    imgs = sorted((a / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    assert np.asarray(Image.open(imgs[0])).shape == (64, 128, 3)
    assert generate_cityscapes(tmp_path / "a", 6, 2, (64, 128), seed=3) == a  # same request: reused
    with pytest.raises(FnatuneError, match="holds another synthetic dataset"):
        generate_cityscapes(tmp_path / "a", 7, 2, (64, 128), seed=3)


def test_missing_root_names_the_layout_and_the_tiny_pipeline(tmp_path: Path) -> None:
    with pytest.raises(FnatuneError, match=r"(?s)leftImg8bit/train/<city>.*labelTrainIds.*pipelines/tiny/seg.yaml"):
        check_cityscapes(tmp_path / "nothing", "train")


def test_label_values_outside_the_classes_are_named(tmp_path: Path) -> None:
    root = generate_cityscapes(tmp_path / "d", 2, 1, (32, 64), seed=0)
    bad = sorted((root / "gtFine" / "train").rglob("*.png"))[1]
    arr = np.asarray(Image.open(bad)).copy()
    arr[0, :3] = [19, 40, 255]
    Image.fromarray(arr).save(bad)
    with pytest.raises(FnatuneError, match=rf"{bad.name} has values \[19, 40\] outside the 19 classes"):
        check_cityscapes(root, "train")


def test_classification_set_is_an_image_folder(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root = generate_classification(tmp_path / "cls", num_classes=4, per_class_train=3, per_class_val=1, size=32)
    ds = ImageFolder(str(root / "train"))
    assert len(ds) == 12 and len(ds.classes) == 4


def test_stream_leaves_the_global_torch_rng_alone() -> None:
    """Opening a pass must not draw from the global RNG (dropout uses it): otherwise a run resumed in the
    middle of a pass sees other dropout masks than the run that was not interrupted."""
    import torch
    from torch.utils.data import TensorDataset

    from fnatune.data import BatchStream

    ds = TensorDataset(torch.arange(10.0))
    stream = BatchStream(ds, 3, seed=4)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = [stream.next()[0].tolist() for _ in range(5)]  # crosses into a second pass
    assert torch.equal(torch.get_rng_state(), before)
    resumed = BatchStream(ds, 3, seed=4)
    resumed.load_state_dict({"pass": 1, "offset": 1})
    assert resumed.next()[0].tolist() == batches[4]
