"""The package's public surface: every advertised name resolves, and the CLI driver starts without torch."""
from __future__ import annotations

import subprocess
import sys
import types

import fnatune


def test_every_public_name_resolves_to_what_its_module_defines() -> None:
    import importlib

    for name in fnatune.__all__:
        value = getattr(fnatune, name)
        if name in fnatune._LAZY:
            assert value is getattr(importlib.import_module(fnatune._LAZY[name]), name), name


def test_remap_is_the_function_even_after_its_submodule_is_imported() -> None:
    import fnatune.remap  # (the import system sets the package attribute to the submodule)

    assert isinstance(fnatune.remap, types.FunctionType)
    assert fnatune.remap is sys.modules["fnatune.remap"].remap


def test_the_run_driver_does_not_import_torch() -> None:
    # `fnatune run` validates a config and starts Ray Tune; the trials import torch, the driver need not
    code = ("import sys, fnatune.cli, fnatune.experiment, fnatune.config, fnatune.summary; "
            "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
