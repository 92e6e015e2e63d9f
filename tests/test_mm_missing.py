"""Without OpenMMLab, a det/seg pipeline stops in its data stage with the install commands, not a
traceback from deep inside an import (simulated here by hiding mmdet)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import fnatune.mm
from fnatune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_det_pipeline_without_mmdet_names_the_install_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mmdet.models", None)  # `import mmdet.models` now raises ImportError
    monkeypatch.delitem(sys.modules, "fnatune.mm.det", raising=False)
    monkeypatch.delattr(fnatune.mm, "det", raising=False)  # `from fnatune.mm import det` reads this first
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/tiny/det.yaml"), "--run-dir", "r",
                                    "--set", "tracking.enabled=false", "--set", "data.generate.num_train=2",
                                    "--set", "data.generate.num_val=1"])
    assert res.exit_code == 2, res.output
    assert "cannot import mmdet.models" in res.output
    assert "MAX_JOBS=2 pip install --no-build-isolation mmcv==2.1.0" in res.output and "make install" in res.output
    assert "Traceback" not in res.output
