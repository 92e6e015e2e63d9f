"""An OpenMMLab install that is there but does not import (a broken mmcv build, say): a det/seg pipeline on the mm
backend stops in its data stage with the install commands, not a traceback from deep inside an import (simulated
here by hiding mmdet). Where OpenMMLab is not installed at all, the config is refused before anything starts
(tests/test_bad_input.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import fnatune.mm
from fnatune.errors import FnatuneError

if fnatune.mm.missing():
    pytest.skip("OpenMMLab is not installed (this case is an install that fails to import)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


def test_det_pipeline_without_mmdet_names_the_install_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mmdet.models", None)  # `import mmdet.models` now raises ImportError
    monkeypatch.delitem(sys.modules, "fnatune.mm.det", raising=False)
    monkeypatch.delattr(fnatune.mm, "det", raising=False)  # `from fnatune.mm import det` reads this first
    # in this process (a Ray trial would import the real mmdet in its own worker process)
    from fnatune.config import load_config
    from fnatune.framework import Progress
    from fnatune.pipeline import execute

    cfg = load_config(ROOT / "pipelines/tiny/det.yaml", ["backend=mm", "tracking.enabled=false", "data.generate.num_train=2",
                                                         "data.generate.num_val=1"])
    with pytest.raises(FnatuneError) as err:
        execute(cfg, tmp_path / "r", progress=Progress(lambda _: None))
    text = str(err.value)
    assert "cannot import mmdet.models" in text
    assert "MAX_JOBS=2 pip install --no-build-isolation mmcv==2.1.0" in text and "make install" in text
