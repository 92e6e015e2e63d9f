"""Synthetic datasets (deterministic, real layouts) and the dataset checks' error messages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
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


class _Broken(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Sample 3 fails as a library would on a corrupt file; ``error`` says how."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 3:
            raise self.error
        return torch.tensor([i])

    def get_data_info(self, i: int) -> dict:
        return {"img_path": f"/data/img{i}.png"}


def test_a_sample_that_fails_to_load_is_a_data_error_naming_its_file_and_a_killed_worker_is_not() -> None:
    """A decode error from a library stops a trial at once (a DataError is a FnatuneError: no Tune retry) and
    names the batch's files, through Subsets; a killed DataLoader worker may pass and keeps its type."""
    from fnatune.data.stream import BatchStream
    from fnatune.errors import DataError

    ds = torch.utils.data.Subset(_Broken(OSError("image file is truncated (5 bytes not processed)")), [0, 1, 3, 5])
    stream = BatchStream(ds, 4, seed=0, shuffle=False)
    with pytest.raises(DataError, match=r"batch 0 of pass 0 failed to load \(OSError: image file is truncated "
                                        r"\(5 bytes not processed\)\); its samples: /data/img0.png, /data/img1.png, "
                                        r"/data/img3.png, /data/img5.png$"):
        stream.next()
    assert stream.offset == 0  # nothing consumed: a resume retries the same batch
    killed = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed.")
    with pytest.raises(RuntimeError, match="is killed by signal") as info:
        BatchStream(_Broken(killed), 8, seed=0, shuffle=False).next()
    assert not isinstance(info.value, DataError)
